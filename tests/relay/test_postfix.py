"""Postfix from the OS packages as a real upstream (skipped only when postfix is not installed)."""

from __future__ import annotations

import email
import email.policy
import time

from kumosubmit.relay.config import RelayConfig
from kumosubmit.spool.models import Message, MessageState
from tests.relay.conftest import message_content


def test_postfix_accepts_what_the_relay_sends(postfix, relay, queue_message):
    dots = message_content("pf-dots", body=b".leading dot\r\n..two\r\n.\r\nend\r\n")
    # Postfix refuses nobody@upstream.test, as a real MTA refuses a mailbox it does not have.
    split = queue_message(rcpt_tos=["bob@example.org", "nobody@upstream.test"])
    bounce = queue_message(mail_from="", rcpt_tos=["carol@example.net"])
    dotted = queue_message(rcpt_tos=["dave@example.com"], content=dots)
    config = RelayConfig(
        host=postfix.host, port=postfix.port, tls="none", helo_name="relay.test", timeout=10
    )
    stats = relay(config)
    assert stats == {"delivered": 4, "dsn": 1}, postfix.log_text()

    split.refresh_from_db()
    assert split.state == MessageState.DELIVERED
    bob, nobody = split.recipient_outcomes
    assert bob["state"] == "delivered" and bob["reply"].startswith("250 2.0.0 Ok: queued as ")
    assert nobody["state"] == "failed"
    assert nobody["reply"].startswith("554 5.7.1 <nobody@upstream.test>: Recipient address")
    (dsn,) = Message.objects.filter(meta__dsn__for=split.queue_id)

    # Postfix delivers to the maildir in the background: one file per recipient.
    deadline = time.monotonic() + 20
    while len(postfix.delivered()) < 4:
        assert time.monotonic() < deadline, postfix.log_text()
        time.sleep(0.1)
    files = postfix.delivered()
    # Each file is Postfix's own trace headers, then our bytes exactly (LF line endings
    # in a maildir).
    for message in (split, bounce, dotted, dsn):
        stored = bytes(Message.objects.get(pk=message.pk).content).replace(b"\r\n", b"\n")
        assert sum(f.endswith(stored) for f in files) == 1, message.queue_id
    by_recipient = {
        email.message_from_bytes(f, policy=email.policy.compat32)["Delivered-To"]: f for f in files
    }
    assert set(by_recipient) == {
        "bob@example.org",
        "carol@example.net",
        "dave@example.com",
        "alice@example.com",
    }
    assert b"Return-Path: <>" in by_recipient["carol@example.net"]  # the null sender kept
    assert b"Return-Path: <>" in by_recipient["alice@example.com"]  # the DSN's
    log = postfix.log_text()
    assert log.count("status=sent (delivered to maildir)") == 4
    assert f"message-id=<{split.queue_id}@test.invalid>" in log
