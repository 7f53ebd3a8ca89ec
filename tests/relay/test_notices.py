"""Notices to owners (kumosubmit/notices.py): composed, stored once per event, relayed.

The new-address notice is what the SMTP side will send after a good AUTH; these
tests call it directly. Stored notices go through the spool and are delivered by
a real relay worker to a real SMTP sink on loopback.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.checks import run_checks
from django.utils import timezone

from kumosubmit import notices
from kumosubmit.audit.models import SeenAddress
from kumosubmit.credentials.models import SmtpLogin
from kumosubmit.db import close_db
from kumosubmit.spool.models import Message
from tests.relay.conftest import relay_config, run_relay

SITE = "https://mail.example.test"


@pytest.fixture
def notice_settings(settings):
    def configure(**values) -> None:
        settings.KUMOSUBMIT = {
            **settings.KUMOSUBMIT,
            "NOTICES": {"SITE_URL": SITE, **values},
        }

    configure()
    return configure


@pytest.fixture
def login(transactional_db) -> SmtpLogin:
    owner = User.objects.create_user("alice", "alice@example.org", "x" * 20)
    return SmtpLogin.objects.create(username="alice@example.com", owner=owner)


def stored(kind: str = "NEW_ADDRESS") -> list[Message]:
    return list(Message.objects.filter(meta__notice=kind).order_by("received_at"))


def test_the_new_address_notice_is_stored_once_per_new_address(notice_settings, login):
    # The first address a login is used from is its owner setting it up: no notice.
    assert notices.new_address_used(login, "192.0.2.10") is False
    assert stored() == []
    assert notices.new_address_used(login, "198.51.100.7", credential="app password “Phone”")
    assert notices.new_address_used(login, "198.51.100.7") is False
    assert notices.new_address_used(login, "192.0.2.10") is False
    # An IPv6 client counts by its /64, as the failed-AUTH counters count it.
    assert notices.new_address_used(login, "2001:db8:1:2::10")
    assert notices.new_address_used(login, "2001:db8:1:2::99") is False
    assert notices.new_address_used(login, "::ffff:198.51.100.7") is False
    messages = stored()
    assert len(messages) == 2
    assert SeenAddress.objects.filter(login=login).count() == 3
    first = email.message_from_bytes(bytes(messages[0].content), policy=email.policy.SMTP)
    assert messages[0].rcpt_tos == ["alice@example.org"]
    assert messages[0].mail_from == "postmaster@mx.test.invalid"
    assert first["Auto-Submitted"] == "auto-generated"
    assert first["Subject"] == "alice@example.com was used from a new address"
    body = first.get_content()
    assert "198.51.100.7" in body and "app password “Phone”" in body
    assert f"{SITE}/credentials/{login.pk}/" in body
    assert b"\r\n" in bytes(messages[0].content) and b"\n\n" not in bytes(messages[0].content)


def test_many_processes_seeing_a_new_address_send_one_notice(notice_settings, login):
    notices.new_address_used(login, "192.0.2.10")
    results: list[bool] = []
    start = threading.Barrier(4)

    def use() -> None:
        start.wait()
        try:
            results.append(notices.new_address_used(login, "203.0.113.9"))
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    assert len(stored()) == 1


def test_the_event_loop_twin_stores_it_through_the_spool(notice_settings, login):
    async def run() -> list[bool]:
        try:
            return [
                await notices.anew_address_used(login, "192.0.2.10"),
                await notices.anew_address_used(login, "192.0.2.11"),
                await notices.anew_address_used(login, "192.0.2.11"),
            ]
        finally:
            await close_db()

    assert asyncio.run(run()) == [False, True, False]
    assert len(stored()) == 1


def test_a_block_on_a_login_is_told_its_owner(notice_settings, login):
    until = timezone.now() + timedelta(minutes=15)
    assert notices.login_blocked(login, "203.0.113.50", until)
    (message,) = stored("LOGIN_BLOCKED")
    assert b"203.0.113.50" in bytes(message.content)
    asyncio.run(notices.alogin_blocked(login, None, until))
    assert len(stored("LOGIN_BLOCKED")) == 2


def test_each_kind_has_its_switch_and_email_delivery_uses_email_backend(notice_settings, login):
    notice_settings(NEW_ADDRESS=False)
    notices.new_address_used(login, "192.0.2.10")
    assert notices.new_address_used(login, "192.0.2.11") is False
    notice_settings(DELIVERY="email", FROM="security@example.com")
    assert notices.new_address_used(login, "192.0.2.12")
    assert stored() == []
    (sent,) = mail.outbox
    assert sent.to == ["alice@example.org"] and sent.from_email == "security@example.com"
    assert sent.extra_headers["Auto-Submitted"] == "auto-generated"
    # No owner and a login that is no address: nobody to tell.
    orphan = SmtpLogin.objects.create(username="scanner")
    notices.new_address_used(orphan, "192.0.2.10")
    assert notices.new_address_used(orphan, "192.0.2.11") is False


def test_a_stored_notice_is_relayed_like_any_message(notice_settings, login, sink):
    notices.new_address_used(login, "192.0.2.10")
    notices.new_address_used(login, "192.0.2.20")
    run_relay(relay_config(sink))
    (received,) = sink.received
    assert received.rcpt_tos == ["alice@example.org"]
    assert b"192.0.2.20" in received.content
    assert stored()[0].state == "delivered"


def test_the_settings_are_checked(settings):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "NOTICES": {"DELIVERY": "pigeon", "NEW_ADDRESS": "yes", "COLOUR": 1},
    }
    assert [m.id for m in run_checks()].count("kumosubmit.E075") == 3
