"""Connection and session limits through real sockets (issue 4, item 3)."""

from __future__ import annotations

import time

import pytest

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.spool.models import Message
from tests.live import RawClient, plain_blob

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"


@pytest.fixture
def limits(settings):
    def set_limits(**values):
        settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, **values}

    return set_limits


@pytest.fixture
def clients():
    opened: list[RawClient] = []
    yield opened
    for client in opened:
        client.close()


def connect(server, opened, **kwargs) -> RawClient:
    client = RawClient(server, **kwargs)
    opened.append(client)
    return client


def in_data(server, opened) -> RawClient:
    """An authenticated client that has just been told 354 (go ahead with the data)."""
    client = connect(server, opened)
    client.starttls()
    client.login(ALICE, PASSWORD)
    client.command(b"MAIL FROM:<alice@example.com>")
    client.command(b"RCPT TO:<bob@example.org>")
    assert client.command(b"DATA")[0].startswith(b"354")
    return client


def test_connections_per_address_are_capped(smtp_server, limits, clients):
    limits(MAX_CONNECTIONS_PER_IP=2)
    first, second = connect(smtp_server, clients), connect(smtp_server, clients)
    assert first.greeting[0].startswith(b"220 ")
    third = connect(smtp_server, clients)
    assert third.greeting == [b"421 4.7.0 Too many connections from your address"]
    assert third.closed()
    # The open sessions are unaffected, and a slot frees up when one closes.
    assert second.command(b"NOOP") == [b"250 2.0.0 OK"]
    assert first.command(b"QUIT") == [b"221 2.0.0 Bye"]
    assert first.closed()
    smtp_server.settle_connections(1)
    assert connect(smtp_server, clients).greeting[0].startswith(b"220 ")


def test_connections_in_all_are_capped(smtp_server, limits, clients):
    limits(MAX_CONNECTIONS=3)
    for _ in range(3):
        assert connect(smtp_server, clients).greeting[0].startswith(b"220 ")
    refused = connect(smtp_server, clients, implicit=True)
    assert refused.greeting == [b"421 4.7.0 Too many connections, please try again later"]
    refused.close()
    smtp_server.settle_connections(3)
    assert ConnectionRecord.objects.get().meta["refused"].startswith("421 4.7.0")


def test_idle_client_gets_421_4_4_2(smtp_server, limits, clients):
    limits(IDLE_TIMEOUT=0.2)
    client = connect(smtp_server, clients)
    client.command(b"EHLO client.test")
    started = time.monotonic()
    assert client.reply() == [b"421 4.4.2 Timeout, closing connection"]
    assert client.closed()
    assert time.monotonic() - started >= 0.15


def test_a_slow_upload_may_outlast_the_idle_timeout(smtp_server, limits, clients, make_login):
    limits(IDLE_TIMEOUT=0.3, DATA_TIMEOUT=10)
    make_login(ALICE, PASSWORD)
    client = in_data(smtp_server, clients)
    client.send(b"Subject: slow\r\n\r\n")
    for _ in range(8):  # 0.8 s in all, never silent for 0.3 s
        time.sleep(0.1)  # the client is slow on purpose
        client.send(b"x" * 100 + b"\r\n")
    client.send(b".\r\n")
    assert client.reply()[0].startswith(b"250 2.0.0 OK queued as")
    assert Message.objects.count() == 1


def test_data_that_takes_too_long_in_all_gets_421(smtp_server, limits, clients, make_login):
    limits(IDLE_TIMEOUT=0.3, DATA_TIMEOUT=0.5)
    make_login(ALICE, PASSWORD)
    client = in_data(smtp_server, clients)
    for _ in range(10):  # a trickle that never goes silent, but never ends either
        time.sleep(0.1)
        try:
            client.send(b"y" * 10 + b"\r\n")
        except OSError:
            break
    assert client.reply() == [b"421 4.4.2 Timeout, closing connection"]
    assert not Message.objects.exists()


def test_silence_during_data_gets_421(smtp_server, limits, clients, make_login):
    limits(IDLE_TIMEOUT=0.2, DATA_TIMEOUT=30)
    make_login(ALICE, PASSWORD)
    client = in_data(smtp_server, clients)
    client.send(b"Subject: then nothing\r\n")
    assert client.reply() == [b"421 4.4.2 Timeout, closing connection"]


def test_recipients_per_message_are_capped(smtp_server, limits, clients, make_login):
    limits(MAX_RECIPIENTS=3)
    make_login(ALICE, PASSWORD)
    client = connect(smtp_server, clients)
    client.starttls()
    client.login(ALICE, PASSWORD)
    client.command(b"MAIL FROM:<alice@example.com>")
    replies = [client.command(b"RCPT TO:<r%d@example.org>" % n)[0] for n in range(5)]
    assert replies[:3] == [b"250 2.1.5 Recipient OK"] * 3
    assert replies[3:] == [b"452 4.5.3 Too many recipients"] * 2
    client.command(b"DATA")
    client.send(b"Subject: t\r\n\r\nbody\r\n.\r\n")
    assert client.reply()[0].startswith(b"250 ")
    assert Message.objects.get().rcpt_tos == ["r0@example.org", "r1@example.org", "r2@example.org"]


def test_messages_per_connection_are_capped(smtp_server, limits, clients, make_login):
    limits(MAX_MESSAGES_PER_CONNECTION=2)
    make_login(ALICE, PASSWORD)
    client = connect(smtp_server, clients)
    client.starttls()
    client.login(ALICE, PASSWORD)
    for _ in range(2):
        client.command(b"MAIL FROM:<alice@example.com>")
        client.command(b"RCPT TO:<bob@example.org>")
        client.command(b"DATA")
        client.send(b"Subject: t\r\n\r\nbody\r\n.\r\n")
        assert client.reply()[0].startswith(b"250 ")
    assert client.command(b"MAIL FROM:<alice@example.com>") == [
        b"421 4.7.0 Too many messages in one connection, please reconnect"
    ]
    assert client.closed()
    assert Message.objects.count() == 2


def test_auth_attempts_per_connection_are_capped(
    smtp_server, limits, clients, make_login, secret_watch
):
    limits(MAX_AUTH_ATTEMPTS=3)
    make_login(ALICE, PASSWORD)
    secret_watch.add("guess number one")
    client = connect(smtp_server, clients)
    client.starttls()
    client.command(b"EHLO client.test")
    blob = plain_blob("", ALICE, "guess number one").encode()
    assert [client.command(b"AUTH PLAIN " + blob)[0][:3] for _ in range(3)] == [b"535"] * 3
    assert client.command(b"AUTH PLAIN " + blob) == [b"421 4.7.0 AUTH sent too many times"]
    assert client.closed()
