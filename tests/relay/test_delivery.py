"""Delivering to a real SMTP upstream: exact envelope and bytes, per-recipient outcomes, DSNs."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta

from django.utils import timezone

from kumosubmit.spool.models import Message, MessageState
from tests.relay.conftest import message_content, relay_config


def test_delivers_the_content_byte_for_byte_with_the_exact_envelope(sink, relay, queue_message):
    body = (
        b".a line that starts with a dot\r\n"
        b"..two dots\r\n"
        b".\r\n"  # a lone dot: must not end DATA
        b"8-bit: caf\xc3\xa9 \xff\xfe\r\n"
        b"trailing spaces   \r\n"
        b"\ttab\r\n" + b"x" * 998 + b"\r\n"
    )
    content = message_content("exact", body=body)
    message = queue_message(
        mail_from="Alice.O'Hara+tag@example.com",
        rcpt_tos=["bob@example.org", '"quoted local"@example.net', "CaSe@Example.ORG"],
        content=content,
    )
    stats = relay(relay_config(sink))
    assert stats == {"delivered": 1}
    (received,) = sink.received
    assert received.content == content
    assert received.mail_from == "Alice.O'Hara+tag@example.com"
    assert received.rcpt_tos == [
        "bob@example.org",
        '"quoted local"@example.net',
        "CaSe@Example.ORG",
    ]
    assert "BODY=8BITMIME" in received.mail_options
    assert f"SIZE={len(content)}" in received.mail_options
    message.refresh_from_db()
    assert message.state == MessageState.DELIVERED
    assert message.attempts == 1
    assert message.next_attempt_at is None
    assert message.delivered_at is not None
    assert message.lease_owner == ""
    assert message.last_error == ""
    assert [o["state"] for o in message.recipient_outcomes] == ["delivered"] * 3
    assert message.recipient_outcomes[0]["reply"] == "250 2.0.0 OK accepted"


def parse(content: bytes) -> email.message.Message:
    return email.message_from_bytes(content, policy=email.policy.compat32)


def dsn_fields(dsn: Message) -> list[dict[str, str]]:
    """The message/delivery-status blocks of a stored DSN, as dicts."""
    report = parse(bytes(dsn.content))
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    text, status, headers = report.get_payload()
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    return [dict(block) for block in status.get_payload()]


def dsns() -> list[Message]:
    return list(Message.objects.filter(mail_from="").order_by("pk"))


def test_each_recipient_has_its_own_outcome_and_the_refused_one_gets_a_dsn(
    sink, relay, queue_message
):
    sink.rcpt_replies["nobody@example.org"] = "550 5.1.1 <nobody@example.org>: no such user"
    message = queue_message(rcpt_tos=["bob@example.org", "nobody@example.org"])
    stats = relay(relay_config(sink))
    # The DSN is queued as the attempt is recorded, and goes out in the same --once run.
    assert stats == {"delivered": 2, "dsn": 1}
    original, bounce = sink.received
    assert original.rcpt_tos == ["bob@example.org"]
    message.refresh_from_db()
    assert message.state == MessageState.DELIVERED  # it reached every recipient it could
    bob, nobody = message.recipient_outcomes
    assert (bob["state"], bob["reply"]) == ("delivered", "250 2.0.0 OK accepted")
    assert nobody["state"] == "failed"
    assert nobody["reply"] == "550 5.1.1 <nobody@example.org>: no such user"
    assert message.last_error == "550 5.1.1 <nobody@example.org>: no such user"

    (dsn,) = dsns()
    assert dsn.rcpt_tos == ["alice@example.com"]
    assert dsn.meta["dsn"] == {"for": message.queue_id, "recipients": ["nobody@example.org"]}
    assert dsn.state == MessageState.DELIVERED
    per_message, recipient = dsn_fields(dsn)
    assert per_message["Reporting-MTA"] == "dns; mx.test.invalid"
    assert per_message["X-kumosubmit-Queue-ID"] == message.queue_id
    assert recipient["Final-Recipient"] == "rfc822; nobody@example.org"
    assert recipient["Action"] == "failed"
    assert recipient["Status"] == "5.1.1"
    assert recipient["Remote-MTA"] == "dns; 127.0.0.1"
    assert recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 <nobody@example.org>: no such user"
    # Relayed like any message: the null sender, to the original sender, the bytes as stored.
    assert (bounce.mail_from, bounce.rcpt_tos) == ("<>", ["alice@example.com"])
    assert bounce.content == bytes(dsn.content)
    report = parse(bounce.content)
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["To"] == "<alice@example.com>"
    headers = report.get_payload()[2].get_payload()
    assert f"Message-ID: <{message.queue_id}@test.invalid>" in headers
    assert "Hello." not in headers  # the header only, not the body


def test_550_at_data_fails_at_once_with_a_dsn(sink, relay, queue_message):
    sink.data_replies = ["550 5.7.1 message content rejected"]
    message = queue_message(rcpt_tos=["bob@example.org", "carol@example.org"])
    relay(relay_config(sink))
    message.refresh_from_db()
    assert message.state == MessageState.FAILED
    assert message.attempts == 1
    assert message.next_attempt_at is None
    assert message.delivered_at is None
    assert [o["state"] for o in message.recipient_outcomes] == ["failed", "failed"]
    (dsn,) = dsns()
    recipients = dsn_fields(dsn)[1:]
    assert [r["Final-Recipient"] for r in recipients] == [
        "rfc822; bob@example.org",
        "rfc822; carol@example.org",
    ]
    assert {r["Status"] for r in recipients} == {"5.7.1"}
    assert [r.mail_from for r in sink.received] == ["<>"]  # only the DSN got through


def test_550_at_mail_from_fails_every_recipient(sink, relay, queue_message):
    message = queue_message(mail_from="")  # a null sender: refused here, and never a DSN
    sink.rcpt_replies["bob@example.org"] = "550 5.1.1 no"
    relay(relay_config(sink))
    message.refresh_from_db()
    assert message.state == MessageState.FAILED
    assert dsns() == [message]  # no new message: a bounce never bounces


def test_a_failed_dsn_gets_no_dsn(sink, relay, queue_message):
    sink.rcpt_replies["alice@example.com"] = "550 5.1.1 sender went away"
    sink.rcpt_replies["bob@example.org"] = "550 5.1.1 no such user"
    message = queue_message()
    relay(relay_config(sink))
    message.refresh_from_db()
    (dsn,) = dsns()
    assert (message.state, dsn.state) == (MessageState.FAILED, MessageState.FAILED)
    assert Message.objects.count() == 2
    assert sink.received == []


def test_451_defers_with_backoff_then_delivers(sink, relay, queue_message):
    sink.rcpt_replies["bob@example.org"] = "451 4.3.0 try again later"
    message = queue_message()
    config = relay_config(sink, retry_delay=10, max_retry_delay=25)
    delays = []
    for attempt in range(1, 5):
        assert relay(config) == {"deferred": 1}
        message.refresh_from_db()
        assert message.state == MessageState.DEFERRED
        assert message.attempts == attempt
        assert message.recipient_outcomes[0]["state"] == "deferred"
        assert message.last_error == "451 4.3.0 try again later"
        delays.append(round((message.next_attempt_at - message.last_attempt_at).total_seconds()))
        # Not due yet: another run leaves it alone.
        assert relay(config) == {}
        Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
    assert delays == [10, 20, 25, 25]  # doubling, capped at MAX_RETRY_DELAY
    del sink.rcpt_replies["bob@example.org"]
    assert relay(config) == {"delivered": 1}
    message.refresh_from_db()
    assert (message.state, message.attempts, message.last_error) == ("delivered", 5, "")
    assert dsns() == []


def test_deferred_past_max_age_fails_with_a_dsn(sink, relay, queue_message):
    sink.data_replies = ["451 4.3.0 busy"] * 5
    message = queue_message()
    config = relay_config(sink, retry_delay=1, max_age=3600)
    relay(config)
    message.refresh_from_db()
    assert message.state == MessageState.DEFERRED
    # The next attempt is never scheduled past the message's deadline.
    Message.objects.filter(pk=message.pk).update(
        received_at=timezone.now() - timedelta(seconds=3600 - 0.5), next_attempt_at=timezone.now()
    )
    relay(relay_config(sink, retry_delay=1000, max_age=3600))
    message.refresh_from_db()
    deadline = message.received_at + timedelta(seconds=3600)
    assert message.next_attempt_at == deadline
    # The deadline passes; the next attempt defers again, and that ends it.
    Message.objects.filter(pk=message.pk).update(
        received_at=timezone.now() - timedelta(seconds=3601), next_attempt_at=timezone.now()
    )
    relay(config)
    message.refresh_from_db()
    assert message.state == MessageState.FAILED
    assert message.attempts == 3
    assert message.last_error.startswith("expired after 3 attempts: 451 4.3.0 busy")
    (dsn,) = dsns()
    (recipient,) = dsn_fields(dsn)[1:]
    assert recipient["Status"] == "4.4.7"
    assert recipient["Action"] == "failed"
    assert recipient["Diagnostic-Code"].startswith("smtp; 451 4.3.0 busy (gave up")


def test_network_errors_defer(make_sink, relay, queue_message):
    sink = make_sink()
    sink.stop()  # nothing listens on its port now
    message = queue_message()
    assert relay(relay_config(sink)) == {"deferred": 1}
    message.refresh_from_db()
    assert message.state == MessageState.DEFERRED
    assert message.last_error.startswith(("SMTPConnectError", "ConnectionRefusedError"))
    assert message.recipient_outcomes[0]["status"] == "4.4.1"


def test_connection_dropped_mid_data_defers_then_delivers_once(sink, relay, queue_message):
    sink.drop_in_data = 1
    message = queue_message()
    config = relay_config(sink, workers=1)
    assert relay(config) == {"deferred": 1}
    assert sink.dropped == 1
    assert sink.received == []
    message.refresh_from_db()
    assert message.state == MessageState.DEFERRED
    assert message.last_error.startswith("SMTPServerDisconnected")
    Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
    assert relay(config) == {"delivered": 1}
    (received,) = sink.received
    assert received.content == bytes(message.content)


def test_a_slow_upstream_past_the_timeout_defers(sink, relay, queue_message):
    sink.data_delay = 1.0
    message = queue_message()
    assert relay(relay_config(sink, data_timeout=0.3)) == {"deferred": 1}
    message.refresh_from_db()
    assert message.last_error.startswith("SMTPReadTimeoutError")
    Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
    assert relay(relay_config(sink, data_timeout=5)) == {"delivered": 1}


def test_workers_deliver_concurrently_to_a_slow_upstream(sink, relay, queue_messages):
    sink.data_delay = 0.4
    queue_messages(8)
    started = timezone.now()
    assert relay(relay_config(sink, workers=8)) == {"delivered": 8}
    # One connection at a time would take 3.2 s.
    assert (timezone.now() - started).total_seconds() < 2.0
    assert sink.connections == 8


def test_connections_are_reused_up_to_the_limit(sink, relay, queue_messages):
    messages = queue_messages(20)
    assert relay(relay_config(sink, workers=1)) == {"delivered": 20}
    assert sink.connections == 1
    # In order of arrival.
    assert sink.message_ids() == [f"<{m.queue_id}@test.invalid>" for m in messages]
    queue_messages(20)
    assert relay(relay_config(sink, workers=1, messages_per_connection=5)) == {"delivered": 20}
    assert sink.connections == 1 + 4


def test_non_ascii_addresses_use_smtputf8(sink, relay, queue_message):
    queue_message(mail_from="jörg@exämple.de", rcpt_tos=["зоя@пример.рф"])
    assert relay(relay_config(sink)) == {"delivered": 1}
    (received,) = sink.received
    assert (received.mail_from, received.rcpt_tos) == ("jörg@exämple.de", ["зоя@пример.рф"])
    assert "SMTPUTF8" in received.mail_options
