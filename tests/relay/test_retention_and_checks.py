"""Retention (prunemessages and the worker's sweep) and the RELAY system check."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from io import StringIO

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from kumosubmit.db import close_db
from kumosubmit.relay.worker import RelayWorker
from kumosubmit.spool.models import Message, MessageState
from tests.relay.conftest import new_message, relay_config

DAY = 86400


def make(state: str, delivered_days_ago: float | None = None) -> Message:
    when = (
        None if delivered_days_ago is None else timezone.now() - timedelta(days=delivered_days_ago)
    )
    message = new_message(state=state, delivered_at=when, next_attempt_at=None)
    message.save()
    return message


def prune(*args: str) -> str:
    out = StringIO()
    call_command("prunemessages", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_prunemessages_removes_old_delivered_content_and_keeps_the_rows(admin_client):
    old = make(MessageState.DELIVERED, delivered_days_ago=8)
    recent = make(MessageState.DELIVERED, delivered_days_ago=6)
    failed = make(MessageState.FAILED)
    queued = make(MessageState.QUEUED)
    size = old.size
    assert prune("--dry-run") == "Would remove the content of 1 delivered message(s).\n"
    assert bytes(Message.objects.get(pk=old.pk).content) != b""
    assert prune() == "Removed the content of 1 delivered message(s).\n"
    old.refresh_from_db()
    assert (bytes(old.content), old.size, old.state) == (b"", size, MessageState.DELIVERED)
    assert old.content_removed_at is not None
    for kept in (recent, failed, queued):
        assert bytes(Message.objects.get(pk=kept.pk).content) == bytes(kept.content)
    assert prune() == "Removed the content of 0 delivered message(s).\n"
    assert prune("--age", str(5 * DAY)) == "Removed the content of 1 delivered message(s).\n"
    page = admin_client.get(reverse("admin:kumosubmit_message_change", args=[old.pk]))
    assert "Removed after the retention period, on" in page.content.decode()


@pytest.mark.django_db
def test_prunemessages_follows_the_setting(settings):
    make(MessageState.DELIVERED, delivered_days_ago=2)
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "RELAY": {"RETENTION": None}}
    assert prune() == "RELAY['RETENTION'] is None: delivered content is kept.\n"
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "RELAY": {"RETENTION": DAY}}
    assert prune() == "Removed the content of 1 delivered message(s).\n"


def test_a_running_worker_sweeps_expired_content(transactional_db, sink):
    old = make(MessageState.DELIVERED, delivered_days_ago=2)

    async def run_briefly() -> None:
        worker = RelayWorker(relay_config(sink, retention=DAY))
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.3)  # a sweep runs at start, then every hour
        worker.stop()
        await task
        await close_db()

    asyncio.run(run_briefly())
    old.refresh_from_db()
    assert bytes(old.content) == b""


def ids(settings, relay) -> list[str]:
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "RELAY": relay}
    return sorted(m.id for m in run_checks() if m.id and m.id.startswith("kumosubmit.E02"))


def test_the_default_and_a_good_relay_pass(settings, pki):
    assert ids(settings, {}) == []
    good = {
        "UPSTREAM": "[2001:db8::25]:587",
        "TLS": "starttls",
        "CA_FILE": str(pki.ca_cert),
        "USERNAME": "relay",
        "PASSWORD": "secret",
        "WORKERS": 8,
        "HANDOFF": True,
        "RETENTION": None,
        "RETRY_DELAY": 0,
    }
    assert ids(settings, good) == []
    assert ids(settings, {"UPSTREAM": "localhost:25", "TLS": "none"}) == []


@pytest.mark.parametrize(
    ("relay", "expected"),
    [
        ("smtp.example:587", ["kumosubmit.E020"]),
        ({"HOST": "smtp.example"}, ["kumosubmit.E020"]),
        ({"VERIFY_CERTIFICATE": "no"}, ["kumosubmit.E020"]),
        ({"UPSTREAM": "smtp.example"}, ["kumosubmit.E021"]),
        ({"UPSTREAM": "smtp.example:0"}, ["kumosubmit.E021"]),
        ({"TLS": "ssl"}, ["kumosubmit.E021"]),
        ({"UPSTREAM": "smtp.example:25", "TLS": "none"}, ["kumosubmit.E021"]),
        ({"HANDOFF": True}, ["kumosubmit.E021"]),
        ({"CA_FILE": "/nonexistent/ca.pem"}, ["kumosubmit.E022"]),
        ({"USERNAME": "relay"}, ["kumosubmit.E022"]),
        ({"WORKERS": 0}, ["kumosubmit.E023"]),
        ({"MESSAGES_PER_CONNECTION": 1.5}, ["kumosubmit.E023"]),
        ({"MAX_AGE": 0}, ["kumosubmit.E023"]),
        ({"LEASE": "120"}, ["kumosubmit.E023"]),
        ({"RETRY_DELAY": -1}, ["kumosubmit.E023"]),
        ({"RETENTION": -1}, ["kumosubmit.E023"]),
    ],
)
def test_bad_relay_settings_are_errors(settings, relay, expected):
    assert ids(settings, relay) == expected
