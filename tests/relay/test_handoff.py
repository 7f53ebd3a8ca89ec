"""Hand-off mode: the listener's own loop relays each message right after its commit and 250."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kumosubmit.relay.config import RelayConfig
from kumosubmit.relay.handoff import Handoff
from kumosubmit.spool.models import Message, MessageState
from tests.live import LiveSMTPServer, quitting
from tests.relay.conftest import relay_config

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
BODY = b"From: alice@example.com\r\nSubject: hand-off\r\n\r\n.dot\r\nHello.\r\n"


def on_loop(server: LiveSMTPServer, coroutine: Any, timeout: float = 30) -> Any:
    """Run ``coroutine`` on the listener's event loop (where runsmtpd would run it)."""
    return asyncio.run_coroutine_threadsafe(coroutine, server.loop).result(timeout)


@contextmanager
def handoff_on(server: LiveSMTPServer, config: RelayConfig | None = None) -> Iterator[Handoff]:
    """A Handoff started in the listener's loop, as runsmtpd starts it; stopped at the end."""
    handoff = Handoff(config, enabled=True if config else None)
    on_loop(server, handoff.start())
    try:
        yield handoff
    finally:
        on_loop(server, handoff.stop(5))


def submit(server: LiveSMTPServer, rcpt_tos: list[str], body: bytes = BODY) -> None:
    with quitting(server.starttls()) as client:
        client.login(ALICE, PASSWORD)
        assert client.sendmail(ALICE, rcpt_tos, body) == {}


def wait_for_state(state: str, count: int = 1, timeout: float = 10) -> list[Message]:
    deadline = time.monotonic() + timeout
    while Message.objects.filter(state=state).count() < count:
        assert time.monotonic() < deadline, list(Message.objects.values("state", "last_error"))
        time.sleep(0.02)
    return list(Message.objects.filter(state=state))


def test_each_stored_message_is_relayed_at_once(smtp_server, make_login, sink):
    make_login(ALICE, PASSWORD)
    # A poll once a minute: only the notification after the commit can be this quick.
    with handoff_on(smtp_server, relay_config(sink, poll_interval=60)) as handoff:
        assert handoff.running
        started = time.monotonic()
        submit(smtp_server, ["bob@example.org", "carol@example.net"])
        (received,) = sink.wait_for(1, timeout=5)
        assert time.monotonic() - started < 3
        (message,) = wait_for_state(MessageState.DELIVERED)
        # What the listener stored (its Received header first) is what the upstream got.
        assert received.content == bytes(message.content)
        assert received.content.endswith(BODY)
        assert received.content.startswith(b"Received: from client.test")
        assert (received.mail_from, received.rcpt_tos) == (
            ALICE,
            ["bob@example.org", "carol@example.net"],
        )
        submit(smtp_server, ["dave@example.com"])
        sink.wait_for(2, timeout=5)
    assert not handoff.running


def test_the_sweep_retries_deferred_messages(smtp_server, make_login, sink):
    make_login(ALICE, PASSWORD)
    sink.data_replies = ["451 4.3.0 not now"]
    config = relay_config(sink, poll_interval=0.2, retry_delay=0.5)
    with handoff_on(smtp_server, config):
        submit(smtp_server, ["bob@example.org"])
        (message,) = wait_for_state(MessageState.DELIVERED, timeout=10)
    assert message.attempts == 2
    assert len(sink.received) == 1


def test_it_is_off_unless_the_setting_turns_it_on(smtp_server, settings, sink):
    handoff = Handoff()
    on_loop(smtp_server, handoff.start())
    assert not handoff.running
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "RELAY": {"HANDOFF": True, "UPSTREAM": sink.address, "TLS": "none"},
    }
    handoff = Handoff()
    on_loop(smtp_server, handoff.start())
    try:
        assert handoff.running
        assert handoff.worker is not None
        assert handoff.worker.config.upstream == sink.address
    finally:
        on_loop(smtp_server, handoff.stop(5))
