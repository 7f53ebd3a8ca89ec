"""Messages over a real TLS session: stored with their meta before the 250, or 451/552."""

from __future__ import annotations

import email
import smtplib

import pytest
from django.db import connection

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.spool.models import Message
from tests.live import plain_blob, quitting

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
BODY = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hello\r\n"
    b"\r\nHi Bob,\r\n.dot-stuffed line\r\n"
)


@pytest.fixture
def client(smtp_server, make_login):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, PASSWORD))[0] == 235
        yield client


def test_message_is_stored_before_250(client, smtp_server):
    client.mail(ALICE)
    client.rcpt("bob@example.org")
    client.rcpt("carol@example.net")
    code, reply = client.data(BODY)
    assert code == 250
    # The row exists as soon as the client has its 250: no waiting for the server.
    message = Message.objects.get()
    assert reply.decode() == f"2.0.0 OK queued as {message.queue_id}"
    assert message.mail_from == ALICE
    assert message.rcpt_tos == ["bob@example.org", "carol@example.net"]
    content = bytes(message.content)
    header = content.partition(b"\r\n\tby ")[0]
    assert header == b"Received: from client.test ([127.0.0.1])"
    # After our trace header, the client's bytes exactly (dot-stuffing undone by smtplib/aiosmtpd).
    assert content.endswith(BODY)
    assert message.size == len(content)
    parsed = email.message_from_bytes(content)
    received = parsed["Received"]
    assert "by mx.test.invalid (kumosubmit) with ESMTPSA id " + message.queue_id in received
    assert "version=TLSv1." in received
    assert parsed["Subject"] == "hello"
    assert message.authz_id == ALICE and message.authn_id == ALICE
    meta = message.meta
    assert meta["authz_id"] == ALICE and meta["authn_id"] == ALICE
    assert meta["peer_address"] == "127.0.0.1"
    assert meta["tls_version"].startswith("TLSv1.") and meta["tls_cipher"]
    assert meta["ehlo_name"] == "client.test"
    assert meta["listener"] == "starttls"


def test_received_header_names_a_single_recipient(client):
    client.sendmail(ALICE, ["bob@example.org"], BODY)
    received = email.message_from_bytes(bytes(Message.objects.get().content))["Received"]
    assert "for <bob@example.org>;" in received


def test_several_messages_in_one_session(client, smtp_server):
    for n in range(3):
        client.sendmail(ALICE, [f"r{n}@example.org"], BODY)
    assert Message.objects.count() == 3
    client.quit()
    smtp_server.settle()
    record = ConnectionRecord.objects.get()
    assert record.messages_accepted == 3
    assert record.bytes_accepted == sum(m.size for m in Message.objects.all())


def test_null_sender_is_accepted(client):
    assert client.docmd("MAIL FROM:<>") == (250, b"2.1.0 Sender OK")
    assert client.rcpt("bob@example.org")[0] == 250
    assert client.data(BODY)[0] == 250
    assert Message.objects.get().mail_from == ""


def test_rset_discards_the_transaction(client):
    client.mail(ALICE)
    client.rcpt("bob@example.org")
    assert client.rset()[0] == 250
    assert client.docmd("DATA")[0] == 503
    assert not Message.objects.exists()


def test_smtputf8_and_8bit_bodies_are_kept_byte_for_byte(client):
    body = "Subject: caf\u00e9\r\n\r\nna\u00efve \u2713\r\n".encode()
    client.sendmail(ALICE, ["bob@example.org"], body, mail_options=["BODY=8BITMIME"])
    assert bytes(Message.objects.get().content).endswith(body)


def test_size_is_enforced_at_mail(smtp_server, make_login, settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "MAX_MESSAGE_SIZE": 1000}
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert client.esmtp_features["size"] == "1000"
        client.login(ALICE, PASSWORD)
        code, text = client.docmd("MAIL FROM:<alice@example.com> SIZE=1001")
        assert code == 552
        assert text.startswith(b"5.3.4 ")


def test_size_is_enforced_at_data(smtp_server, make_login, settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "MAX_MESSAGE_SIZE": 1000}
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        client.login(ALICE, PASSWORD)
        client.mail(ALICE)
        client.rcpt("bob@example.org")
        code, text = client.data(
            b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 20 + b"y" * 900 + b"\r\n"
        )
        assert code == 552
        assert text.startswith(b"5.3.4 ")
        # The session is still usable afterwards.
        assert client.noop()[0] == 250
    assert not Message.objects.exists()


def _table(name: str) -> str:
    return connection.ops.quote_name(name)


def test_storage_failure_gets_451_and_nothing_is_half_stored(client, caplog):
    table = Message._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {_table(table)} RENAME TO {_table(table + '_away')}")
    try:
        client.mail(ALICE)
        client.rcpt("bob@example.org")
        code, text = client.data(BODY)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {_table(table + '_away')} RENAME TO {_table(table)}")
    assert code == 451
    assert text == b"4.3.0 Message not stored, please try again later"
    assert "could not store a message" in caplog.text
    assert not Message.objects.exists()
    # Service resumes as soon as the database does: the same session can send again.
    assert client.sendmail(ALICE, ["bob@example.org"], BODY) == {}
    assert Message.objects.count() == 1


def test_replies_carry_enhanced_status_codes(client):
    assert client.noop() == (250, b"2.0.0 OK")
    assert client.docmd("RCPT TO:<bob@example.org>") == (503, b"5.5.1 Error: need MAIL command")
    assert client.docmd("BOGUS")[1].startswith(b"5.5.2 ")
    assert client.docmd("MAIL FROM:<alice@example.com> FOO=BAR")[1].startswith(b"5.5.4 ")


def test_mail_from_before_ehlo_needs_helo(smtp_server):
    with quitting(smtplib.SMTP("127.0.0.1", smtp_server.starttls_port, timeout=10)) as client:
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 503


def test_help_names_the_commands_and_their_syntax(client):
    code, text = client.docmd("HELP", "MAIL")
    assert code == 250 and text.startswith(b"2.0.0 Syntax: MAIL FROM: <address>"), text
    code, text = client.docmd("HELP")
    assert code == 250 and b"MAIL" in text and b"RCPT" in text
