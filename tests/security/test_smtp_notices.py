"""Notices from the SMTP side (issue 20, point 3): a new address, a block on a login."""

from __future__ import annotations

import smtplib
import time

import pytest
from django.contrib.auth.models import User

from kumosubmit.spool.models import Message
from tests.live import plain_blob, quitting

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
OWNER = "owner@example.net"


@pytest.fixture
def alice(make_login, transactional_db):
    login = make_login(ALICE, PASSWORD)
    login.owner = User.objects.create_user("alice", OWNER, "site password 12345")
    login.save()
    return login


def auth(server, password: str, source: str) -> int:
    client = smtplib.SMTP(
        server.host,
        server.starttls_port,
        local_hostname="client.test",
        timeout=10,
        source_address=(source, 0),
    )
    with quitting(client):
        client.starttls(context=server.pki.client_context())
        client.ehlo()
        return client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, password))[0]


def notices_to_owner(count: int) -> list[str]:
    """The notices stored for the owner, once there are ``count`` (they are sent after
    the reply); the ones beyond must not come either."""
    deadline = time.monotonic() + 5
    while Message.objects.filter(rcpt_tos=[OWNER]).count() < count:
        assert time.monotonic() < deadline, "a notice was not stored"
        time.sleep(0.05)
    time.sleep(0.3)  # room for one too many
    return [bytes(m.content).decode() for m in Message.objects.filter(rcpt_tos=[OWNER])]


def test_a_new_address_is_noticed_once(smtp_server, alice):
    assert auth(smtp_server, PASSWORD, "127.0.0.1") == 235  # the first ever: recorded silently
    assert notices_to_owner(0) == []
    assert auth(smtp_server, PASSWORD, "127.0.0.2") == 235
    [notice] = notices_to_owner(1)
    assert "127.0.0.2" in notice and ALICE in notice
    assert "/credentials/" in notice  # where to revoke
    for source in ("127.0.0.2", "127.0.0.1", "127.0.0.2"):
        assert auth(smtp_server, PASSWORD, source) == 235
    assert len(notices_to_owner(1)) == 1


def test_a_block_on_the_login_is_noticed_once(smtp_server, alice, settings, secret_watch):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "BRUTE_FORCE": {"DELAY": 0, "IP_BLOCK_AFTER": None, "LOGIN_BLOCK_AFTER": 3},
    }
    secret_watch.add("a wrong guess")
    codes = [auth(smtp_server, "a wrong guess", "127.0.0.9") for _ in range(5)]
    assert codes == [535, 535, 535, 454, 454]
    [notice] = notices_to_owner(1)
    assert "was blocked" in notice and "127.0.0.9" in notice
