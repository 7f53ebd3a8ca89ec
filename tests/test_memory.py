"""Memory, measured on a real runsmtpd process: idle TLS sessions, large messages, the budget.

The server's resident memory is read from /proc/<pid>/status (VmRSS, and
VmHWM for the peak, which writing 5 to /proc/<pid>/clear_refs resets). The
figures for 10,000 sessions and the timings are in docs/security.md, "Memory".
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connection

from kumosubmit.spool.models import Message
from tests import tlsutil
from tests.live import free_port, quitting
from tests.load import idle_sessions, open_session
from tests.process import ManageProcess, command_env

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc"
)

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
MiB = 1024 * 1024


class Server:
    """A ``runsmtpd --workers 1`` process: one worker, so its pid is the worker's."""

    def __init__(self, process: ManageProcess, starttls_port: int, implicit_port: int) -> None:
        self.process = process
        self.pid = process.proc.pid
        self.starttls_port = starttls_port
        self.implicit_port = implicit_port

    def status(self, key: str) -> int:
        """A VmRSS/VmHWM-style line of /proc/<pid>/status, in bytes."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise LookupError(key)

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")


@pytest.fixture
def start_server(
    tmp_path: Path, transactional_db: None, pki: tlsutil.TestPKI
) -> Iterator[Callable[..., Server]]:
    started: list[ManageProcess] = []

    def start(**settings: object) -> Server:
        env = command_env(tmp_path / "data")
        env["DJANGO_SETTINGS_MODULE"] = "tests.memory_settings"
        env["KUMOSUBMIT_TEST_SETTINGS"] = json.dumps(settings)
        starttls, implicit = free_port(), free_port()
        process = ManageProcess(
            "runsmtpd",
            *("--listen", f"127.0.0.1:{starttls}", "--implicit-tls", f"127.0.0.1:{implicit}"),
            *("--workers", "1", "--hostname", "localhost", *pki.cert_args()),
            env=env,
        )
        started.append(process)
        process.wait_for("listening on")
        return Server(process, starttls, implicit)

    yield start
    for process in started:
        process.kill()


def client(server: Server, pki: tlsutil.TestPKI) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", server.starttls_port, local_hostname="client.test", timeout=60)
    smtp.starttls(context=pki.client_context())
    smtp.login(ALICE, PASSWORD)
    return smtp


def big_message(size: int, tag: bytes = b"big") -> bytes:
    """``size`` bytes of base64-like text in 78-byte lines, as an attachment would be."""
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    head = b"Subject: " + tag + b"\r\nFrom: <alice@example.com>\r\n\r\n"
    return head + line * ((size - len(head)) // len(line))


def test_run_raises_the_open_files_limit(start_server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard limit above 256")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the child
    try:
        server = start_server()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert f"Open files limit raised from 256 to {hard}." in server.process.output
    limits = Path(f"/proc/{server.pid}/limits").read_text()
    assert any(
        line.startswith("Max open files") and line.split()[3:5] == [str(hard), str(hard)]
        for line in limits.splitlines()
    ), limits


SESSIONS = 400


def test_idle_tls_sessions_are_cheap_and_new_ones_are_served(start_server, make_login, pki):
    """Hundreds of authenticated idle sessions, half STARTTLS, half implicit TLS.

    asyncio's TLS transport alone would take 256 KiB per session (its receive
    buffer); kumosubmit's takes 32 KiB and the whole session about 75 KiB.
    """
    make_login(ALICE, PASSWORD)
    server = start_server(MAX_CONNECTIONS_PER_IP=SESSIONS + 10)
    context = pki.client_context()
    ports = [(server.starttls_port, False), (server.implicit_port, True)]

    async def scenario() -> tuple[int, int, float]:
        # Warm up what the first sessions start (the argon2 pool, the database thread).
        async with idle_sessions(4, "127.0.0.1", ports, context, ALICE, PASSWORD):
            pass
        before = server.status("VmRSS")
        async with idle_sessions(
            SESSIONS, "127.0.0.1", ports, context, ALICE, PASSWORD
        ) as sessions:
            assert len(sessions) == SESSIONS
            during = server.status("VmRSS")
            # A new session is served meanwhile, from greeting to a stored message.
            started = time.monotonic()
            extra = await open_session("127.0.0.1", server.starttls_port, context, ALICE, PASSWORD)
            assert (await extra.command(b"MAIL FROM:<alice@example.com>"))[0].startswith(b"250")
            assert (await extra.command(b"RCPT TO:<bob@example.org>"))[0].startswith(b"250")
            assert (await extra.command(b"DATA"))[0].startswith(b"354")
            reply = await extra.command(b"Subject: meanwhile\r\n\r\nhi\r\n.")
            assert reply[0].startswith(b"250 2.0.0 OK queued as"), reply
            took = time.monotonic() - started
            await extra.close()
            # Every idle session is still there and answers.
            replies = await asyncio.gather(*(s.command(b"NOOP") for s in sessions[::40]))
            assert all(r == [b"250 2.0.0 OK"] for r in replies)
        return before, during, took

    before, during, took = asyncio.run(scenario())
    per_session = (during - before) / SESSIONS
    assert per_session < 128 * 1024, f"{per_session / 1024:.0f} KiB per idle session"
    assert took < 5, f"a new session took {took:.1f} s"
    assert [
        bytes(m.content).endswith(b"Subject: meanwhile\r\n\r\nhi\r\n")
        for m in Message.objects.all()
    ].count(True) == 1


@pytest.mark.skipif(connection.vendor != "sqlite", reason="a SQLite table's column order")
def test_sqlite_keeps_message_content_in_the_last_column(db):
    # zeroblob(N) is written without its N zeros in memory only as a row's last value
    # (kumosubmit/spool/orm.py, _write_blob). A migration that rebuilds the table or adds
    # a column puts another column last: it must move content back (as 0006 does).
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pragma_table_info('kumosubmit_message')")
        columns = [name for (name,) in cursor.fetchall()]
    assert columns[-1] == "content", columns


@pytest.mark.parametrize("size", [20_000_000, 35_000_000])
def test_a_large_message_grows_memory_by_less_than_twice_its_size(
    start_server, make_login, pki, size
):
    make_login(ALICE, PASSWORD)
    server = start_server(MAX_MESSAGE_SIZE=35_000_000)
    body = big_message(size)
    with quitting(client(server, pki)) as smtp:
        # One small message first, so that what any first message sets up is in place.
        assert smtp.sendmail(ALICE, ["bob@example.org"], b"Subject: warm\r\n\r\nup\r\n") == {}
        server.reset_peak()
        before = server.status("VmRSS")
        started = time.monotonic()
        assert smtp.sendmail(ALICE, ["bob@example.org"], body) == {}
        took = time.monotonic() - started
        growth = server.status("VmHWM") - before
    print(f"{size / 1e6:.0f} MB: {took * 1000:.0f} ms, peak growth {growth / MiB:.1f} MiB")
    # The listener holds the one copy it read the message into; the database gets it a
    # piece at a time (COPY on PostgreSQL, incremental blob I/O on SQLite), never as one
    # bound value: see docs/security.md, "Memory".
    assert growth < 2 * len(body), f"grew by {growth / len(body):.2f} x the message"
    stored = Message.objects.get(mail_from=ALICE, size__gt=size // 2)
    content = bytes(stored.content)
    assert content.startswith(b"Received: from client.test")
    assert content.endswith(body)


def test_the_memory_budget_defers_what_does_not_fit(start_server, make_login, pki):
    """DATA_MEMORY_BUDGET across sessions: 452 4.3.1 to the one that does not fit."""
    make_login(ALICE, PASSWORD)
    server = start_server(DATA_MEMORY_BUDGET=12 * MiB, MAX_MESSAGE_SIZE=10 * MiB)
    first, second = big_message(8 * MiB, b"first"), big_message(8 * MiB, b"second")

    with quitting(client(server, pki)) as one, quitting(client(server, pki)) as two:
        # A declared SIZE is taken from the budget when DATA starts: while the first
        # message is being sent, the second is told 452 4.3.1 at MAIL FROM.
        one.mail(ALICE, [f"SIZE={len(first)}"])
        one.rcpt("bob@example.org")
        assert one.docmd("DATA")[0] == 354
        one.send(first[: len(first) // 2])
        code, text = two.mail(ALICE, [f"SIZE={len(second)}"])
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
        # Without SIZE, it is refused once its data outgrows what is left: at the end,
        # after the whole upload, the client is told 452 4.3.1 and may try again.
        two.rset()
        two.mail(ALICE)
        two.rcpt("bob@example.org")
        assert two.data(second) == (452, b"4.3.1 Insufficient system storage")
        # The first message was never disturbed: it is stored, whole.
        one.send(first[len(first) // 2 :] + b".\r\n")
        assert one.getreply()[0] == 250
        # Its memory is free again: the second message now fits.
        two.rset()
        assert two.sendmail(ALICE, ["bob@example.org"], second) == {}  # smtplib sends SIZE=
    stored = {bytes(m.content).split(b"\r\n\r\n", 1)[1] for m in Message.objects.all()}
    assert stored == {first.split(b"\r\n\r\n", 1)[1], second.split(b"\r\n\r\n", 1)[1]}
    server.process.signal(signal.SIGTERM)
    assert server.process.finish() == 0
    assert server.process.output.count("DATA_MEMORY_BUDGET exhausted") == 2


def test_concurrent_large_messages_within_the_budget_are_all_stored(start_server, make_login, pki):
    """Many large messages at once, more than the budget holds: each is 250 or 452, none lost."""
    make_login(ALICE, PASSWORD)
    server = start_server(DATA_MEMORY_BUDGET=20 * MiB, MAX_MESSAGE_SIZE=10 * MiB)
    results: dict[int, int] = {}

    def send(index: int) -> None:
        body = big_message(6 * MiB, b"concurrent %d" % index)
        with quitting(client(server, pki)) as smtp:
            try:
                smtp.sendmail(ALICE, ["bob@example.org"], body)
                results[index] = 250
            except smtplib.SMTPResponseException as error:  # at MAIL FROM (SIZE=) or DATA
                results[index] = error.smtp_code

    threads = [threading.Thread(target=send, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(results.values()) <= {250, 452} and len(results) == 6
    assert 250 in results.values()
    stored = Message.objects.all()
    assert len(stored) == list(results.values()).count(250)
    for message in stored:
        content = bytes(message.content)
        index = int(content.split(b"Subject: concurrent ", 1)[1].split(b"\r\n", 1)[0])
        assert content.endswith(big_message(6 * MiB, b"concurrent %d" % index))
