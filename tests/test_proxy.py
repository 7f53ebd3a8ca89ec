"""PROXY protocol behind a real HAProxy: the client's address, not the balancer's, counts."""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.models import AuthFailureCounter
from kumosubmit.spool.models import Message
from tests.live import free_port, plain_blob, quitting
from tests.process import command_env, manage

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="HAProxy is not installed (apt-get install haproxy)"
)


def wait_until_listening(port: int, process: subprocess.Popen, seconds: float = 10) -> None:
    """HAProxy says nothing when ready; its port accepting is the event to wait for."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"haproxy exited: {process.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("haproxy did not start listening")


@pytest.fixture
def haproxy(smtp_server, tmp_path: Path):
    """HAProxy in TCP mode: one frontend sending PROXY v1, one sending v2, to kumosubmit."""
    v1, v2 = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"""
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{v1}
    default_backend kumosubmit_v1
backend kumosubmit_v1
    server smtp 127.0.0.1:{smtp_server.proxy_port} send-proxy
frontend v2
    bind 127.0.0.1:{v2}
    default_backend kumosubmit_v2
backend kumosubmit_v2
    server smtp 127.0.0.1:{smtp_server.proxy_port} send-proxy-v2
"""
    )
    process = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_listening(v1, process)
        wait_until_listening(v2, process)
        yield {1: v1, 2: v2}
    finally:
        process.terminate()
        process.communicate(timeout=10)


def client_via(port: int, source: str, pki) -> smtplib.SMTP:
    client = smtplib.SMTP(
        "127.0.0.1", port, local_hostname="client.test", source_address=(source, 0), timeout=10
    )
    client.starttls(context=pki.client_context())
    client.ehlo()
    return client


@pytest.mark.parametrize("version", [1, 2])
def test_the_real_client_is_seen_through_haproxy(smtp_server, haproxy, pki, make_login, version):
    make_login(ALICE, PASSWORD)
    with quitting(client_via(haproxy[version], "127.0.0.7", pki)) as client:
        assert client.login(ALICE, PASSWORD)[0] == 235
        assert client.sendmail(ALICE, ["bob@example.org"], b"Subject: t\r\n\r\nbody\r\n") == {}
    smtp_server.settle()
    # Connections HAProxy opened to probe its port are audited too; ours authenticated.
    record = ConnectionRecord.objects.get(auth_outcome="success")
    assert record.peer_address == "127.0.0.7"
    assert record.meta["proxy_address"] == "127.0.0.1"
    assert record.meta["proxy_version"] == version
    message = Message.objects.get()
    assert message.meta["peer_address"] == "127.0.0.7"
    assert b"([127.0.0.7])" in bytes(message.content)


def test_brute_force_counters_see_the_real_client(
    smtp_server, haproxy, pki, make_login, secret_watch
):
    make_login(ALICE, PASSWORD)
    secret_watch.add("not alices password")
    with quitting(client_via(haproxy[2], "127.0.0.8", pki)) as client:
        reply = client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, "not alices password"))
        assert reply[0] == 535
    counters = set(AuthFailureCounter.objects.values_list("kind", "value"))
    assert ("address", "127.0.0.8") in counters
    assert not [c for c in counters if c[0] == "address" and c[1] == "127.0.0.1"]


def test_per_address_limit_applies_to_clients_behind_the_balancer(
    smtp_server, haproxy, pki, settings
):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "MAX_CONNECTIONS_PER_IP": 2}
    clients = [client_via(haproxy[1], "127.0.0.7", pki) for _ in range(2)]
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            client_via(haproxy[1], "127.0.0.7", pki)
        assert refused.value.smtp_code == 421
        # Another client behind the same balancer is not affected.
        with quitting(client_via(haproxy[1], "127.0.0.9", pki)) as other:
            assert other.noop()[0] == 250
    finally:
        for client in clients:
            client.quit()


def raw_connect(port: int, source: str, first_bytes: bytes) -> bytes:
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source, 0)
    ) as sock:
        sock.sendall(first_bytes)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
            if b"\r\n" in received:
                break
        return received


def test_a_header_from_an_untrusted_address_is_refused(smtp_server):
    forged = b"PROXY TCP4 203.0.113.5 127.0.0.1 4321 25\r\nEHLO x\r\n"
    assert raw_connect(smtp_server.proxy_port, "127.0.0.9", forged) == b""
    smtp_server.settle()
    record = ConnectionRecord.objects.get()
    assert record.peer_address == "127.0.0.9"  # not the forged 203.0.113.5
    assert record.meta["proxy_error"] == "untrusted"


def test_a_missing_header_is_refused(smtp_server):
    assert raw_connect(smtp_server.proxy_port, "127.0.0.1", b"EHLO client.test\r\n") == b""


def test_a_v2_local_header_is_the_balancers_own_check(smtp_server):
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    local = signature + b"\x20\x00\x00\x00"  # version 2, command LOCAL, no addresses
    greeting = raw_connect(smtp_server.proxy_port, "127.0.0.1", local)
    assert greeting.startswith(b"220 ")


def test_proxy_listener_needs_trusted_proxies(tmp_path, transactional_db):
    result = manage(
        "runsmtpd", "--proxy-listen", f"127.0.0.1:{free_port()}", env=command_env(tmp_path)
    )
    assert result.returncode == 1
    assert "needs --trusted-proxy" in result.stderr
