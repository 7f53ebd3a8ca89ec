"""``runsmtpd --workers N``: N processes on the same ports, restarted when they die."""

from __future__ import annotations

import os
import re
import signal
import smtplib
from pathlib import Path

import pytest

from kumosubmit.audit.models import ConnectionRecord
from tests.live import free_port, quitting
from tests.process import ManageProcess, command_env

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def started_pids(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)", output)]


@pytest.fixture
def workers(tmp_path, pki, transactional_db, make_login):
    make_login(ALICE, PASSWORD)
    port = free_port()
    process = ManageProcess(
        "runsmtpd",
        "--listen",
        f"127.0.0.1:{port}",
        *pki.cert_args(),
        "--workers",
        "3",
        "--shutdown-timeout",
        "5",
        env=command_env(tmp_path),
    )
    process.port = port
    try:
        process.wait_for("listening on")
        for n in range(3):
            process.wait_for(f"worker {n} started")
        yield process
    finally:
        process.kill()


def send(port: int, pki, body: bytes = b"Subject: t\r\n\r\nbody\r\n") -> None:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    with quitting(client):
        client.starttls(context=pki.client_context())
        client.login(ALICE, PASSWORD)
        client.sendmail(ALICE, ["bob@example.org"], body)


def sockets_of(pid: int) -> set[str]:
    """The sockets ``pid`` holds open (an fd it closes while we look is skipped)."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed between the listing and the readlink
            continue
        if target.startswith("socket:"):
            sockets.add(target)
    return sockets


def test_n_workers_share_the_port(workers, pki):
    assert "with 3 worker process(es)" in workers.output
    pids = started_pids(workers.output)
    assert children(workers.proc.pid) == set(pids)
    # One listening socket, inherited by every worker: the kernel hands each new
    # connection to whichever worker accepts first.
    shared = set.intersection(*(sockets_of(pid) for pid in pids)) & sockets_of(workers.proc.pid)
    assert shared
    for _ in range(6):
        send(workers.port, pki)
    workers.signal(signal.SIGTERM)
    assert workers.finish() == 0
    served_by = set(ConnectionRecord.objects.values_list("meta__pid", flat=True))
    assert served_by and served_by <= set(pids)


def test_a_worker_that_dies_is_restarted(workers, pki):
    victim = started_pids(workers.output)[0]
    os.kill(victim, signal.SIGKILL)
    workers.wait_for(f"(pid {victim}) exited with status -9")
    workers.wait_for("worker 0 started", timeout=10)
    replacement = started_pids(workers.output)[-1]
    assert replacement != victim
    assert victim not in children(workers.proc.pid)
    assert replacement in children(workers.proc.pid)
    for _ in range(4):
        send(workers.port, pki)
    workers.signal(signal.SIGTERM)
    assert workers.finish() == 0
    assert "Stopped." in workers.output


def test_sigterm_drains_every_worker(workers, pki):
    busy = smtplib.SMTP("127.0.0.1", workers.port, local_hostname="c.test", timeout=10)
    busy.starttls(context=pki.client_context())
    busy.login(ALICE, PASSWORD)
    busy.mail(ALICE)
    busy.rcpt("bob@example.org")
    workers.signal(signal.SIGTERM)
    workers.wait_for("Shutting down")
    workers.wait_for("stopped listening", count=3)
    assert busy.data(b"Subject: last one\r\n\r\nbody\r\n")[0] == 250
    assert busy.getreply()[0] == 421
    busy.close()
    assert workers.finish(timeout=20) == 0
    assert not [pid for pid in started_pids(workers.output) if Path(f"/proc/{pid}").exists()]
