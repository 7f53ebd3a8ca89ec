"""``manage.py runsmtpd`` as a real process: first run, bind errors, migrations, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import stat
from pathlib import Path

import pytest

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.spool.models import Message
from tests.live import free_port, quitting
from tests.process import ManageProcess, command_env, manage

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
BODY = b"Subject: shutdown test\r\n\r\nbody\r\n"


@pytest.fixture
def runsmtpd(tmp_path, transactional_db):
    """Start runsmtpd with the given arguments; always stopped at the end."""
    started = []

    def start(*args: str, env: dict[str, str] | None = None) -> ManageProcess:
        process = ManageProcess("runsmtpd", *args, env=env or command_env(tmp_path / "data"))
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def connect(port: int, context: ssl.SSLContext) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    client.starttls(context=context)
    client.ehlo()
    return client


def test_first_run_makes_a_self_signed_certificate(runsmtpd, tmp_path, make_login):
    make_login(ALICE, PASSWORD)
    port = free_port()
    server = runsmtpd("--listen", f"127.0.0.1:{port}", "--hostname", "localhost")
    output = server.wait_for("listening on")
    data = tmp_path / "data"
    assert f"Made a self-signed certificate for localhost: {data / 'selfsigned-cert.pem'}" in output
    assert f"listening on 127.0.0.1:{port} (STARTTLS)" in output
    assert stat.S_IMODE((data / "selfsigned-key.pem").stat().st_mode) == 0o600
    # A client that trusts exactly this certificate verifies it for 127.0.0.1.
    context = ssl.create_default_context(cafile=str(data / "selfsigned-cert.pem"))
    with quitting(connect(port, context)) as client:
        assert client.login(ALICE, PASSWORD)[0] == 235
        assert client.sendmail(ALICE, ["bob@example.org"], BODY) == {}
    assert Message.objects.get().authn_id == ALICE
    server.signal(signal.SIGTERM)
    assert server.finish() == 0
    assert "Stopped." in server.output
    assert PASSWORD not in server.output
    assert ConnectionRecord.objects.get().auth_outcome == "success"
    # The next run keeps the certificate.
    again = runsmtpd("--listen", f"127.0.0.1:{port}", "--hostname", "localhost")
    assert "Using a self-signed certificate" in again.wait_for("listening on")
    again.signal(signal.SIGINT)
    assert again.finish() == 0


def test_busy_port_is_one_line(tmp_path, pki, transactional_db):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = manage(
            "runsmtpd",
            "--listen",
            f"127.0.0.1:{port}",
            *pki.cert_args(),
            env=command_env(tmp_path),
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"CommandError: Cannot listen on 127.0.0.1:{port} (STARTTLS): "
        "the address is already in use."
    )


def test_unapplied_migrations_refuse_to_start(tmp_path, transactional_db):
    env = command_env(tmp_path, database=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    result = manage("runsmtpd", "--listen", f"127.0.0.1:{free_port()}", env=env)
    assert result.returncode == 1
    assert "unapplied migration(s)" in result.stderr
    assert "python manage.py migrate" in result.stderr


def test_certificate_options_go_together(tmp_path, pki, transactional_db):
    result = manage("runsmtpd", "--tls-cert", str(pki.server_cert), env=command_env(tmp_path))
    assert result.returncode == 1
    assert "--tls-cert and --tls-key go together" in result.stderr


def test_sigterm_drains_sessions_then_exits_0(runsmtpd, pki, make_login):
    make_login(ALICE, PASSWORD)
    port, implicit_port = free_port(), free_port()
    server = runsmtpd(
        "--listen",
        f"127.0.0.1:{port}",
        "--implicit-tls",
        f"127.0.0.1:{implicit_port}",
        *pki.cert_args(),
        "--shutdown-timeout",
        "20",
        "--workers",
        "2",
    )
    server.wait_for("listening on")
    context = pki.client_context()
    busy = connect(port, context)
    busy.login(ALICE, PASSWORD)
    busy.mail(ALICE)
    busy.rcpt("bob@example.org")
    idle = smtplib.SMTP_SSL("127.0.0.1", implicit_port, context=context, timeout=10)
    idle.ehlo()
    idle.login(ALICE, PASSWORD)

    server.signal(signal.SIGTERM)
    server.wait_for("Shutting down")
    server.wait_for("stopped listening", count=2)  # both workers
    # The idle session is told at once; the one inside a transaction may finish it.
    assert idle.getreply() == (421, b"4.3.2 Service shutting down, please try again later")
    idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert busy.data(BODY)[0] == 250
    assert busy.getreply()[0] == 421
    busy.close()
    assert server.finish(timeout=10) == 0
    assert "Stopped." in server.output
    assert Message.objects.count() == 1
    assert ConnectionRecord.objects.count() == 2


def test_sessions_still_open_after_the_timeout_are_closed(runsmtpd, pki, make_login):
    make_login(ALICE, PASSWORD)
    port = free_port()
    server = runsmtpd(
        "--listen",
        f"127.0.0.1:{port}",
        *pki.cert_args(),
        "--shutdown-timeout",
        "0.5",
        "--workers",
        "1",
    )
    server.wait_for("listening on")
    stuck = connect(port, pki.client_context())
    stuck.login(ALICE, PASSWORD)
    stuck.mail(ALICE)
    server.signal(signal.SIGTERM)
    # The client is told, and the server exits even though the client never closes.
    assert stuck.getreply()[0] == 421
    assert server.finish(timeout=10) == 0
    stuck.close()
    assert not Message.objects.exists()
    assert ConnectionRecord.objects.count() == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_workers_start_still_stops_them_all(runsmtpd, pki, signum):
    """A stop signal that lands while workers are being forked reaches every one of them."""
    for _ in range(5):
        process = runsmtpd(
            "--listen", f"127.0.0.1:{free_port()}", *pki.cert_args(), "--workers", "4"
        )
        process.wait_for("listening on")  # printed just before the first fork
        process.signal(signum)
        assert process.finish(timeout=20) == 0
        assert "did not stop in time" not in process.output


def listening_ports(pid: int) -> set[tuple[str, int]]:
    """The TCP (host, port) pairs process ``pid`` listens on, from /proc (no guessing)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                raw = bytes.fromhex(address)
                if table == "tcp":
                    host = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    host = socket.inet_ntop(socket.AF_INET6, words)
                found.add((host, int(port, 16)))
    return found


@pytest.mark.parametrize("option", ["--proxy-listen", "--implicit-tls"])
def test_one_listener_option_alone_binds_nothing_else(runsmtpd, pki, option):
    """The default STARTTLS listener is only for when no listener of any kind is given."""
    port = free_port()
    server = runsmtpd(
        option,
        f"127.0.0.1:{port}",
        "--trusted-proxy",
        "127.0.0.1",
        *pki.cert_args(),
        "--workers",
        "1",
    )
    output = server.wait_for("listening on")
    line = next(line for line in output.splitlines() if "listening on" in line)
    assert f"listening on 127.0.0.1:{port} (" in line
    assert "2587" not in line
    assert listening_ports(server.proc.pid) == {("127.0.0.1", port)}
    server.signal(signal.SIGTERM)
    assert server.finish() == 0


def test_with_no_listener_given_the_default_starttls_one_is_bound(runsmtpd, pki):
    """No option, no setting: 127.0.0.1:2587 (STARTTLS), and only that."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 2587))
        except OSError:
            pytest.skip("127.0.0.1:2587 is in use on this machine")
    server = runsmtpd(*pki.cert_args(), "--workers", "1")
    assert "listening on 127.0.0.1:2587 (STARTTLS)" in server.wait_for("listening on")
    assert listening_ports(server.proc.pid) == {("127.0.0.1", 2587)}
    server.signal(signal.SIGTERM)
    assert server.finish() == 0
