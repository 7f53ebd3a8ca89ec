"""Hostile clients through real sockets: injection, smuggling, junk, floods (issue 4, item 1)."""

from __future__ import annotations

import re

import pytest

from kumosubmit.spool.models import Message
from tests.live import RawClient

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
REPLY = re.compile(rb"^[2-5]\d\d( [245]\.\d{1,3}\.\d{1,3} .*)?")


@pytest.fixture
def raw(smtp_server):
    clients = []

    def connect(**kwargs) -> RawClient:
        client = RawClient(smtp_server, **kwargs)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def authed(raw, make_login):
    """A raw client after STARTTLS and AUTH."""
    make_login(ALICE, PASSWORD)
    client = raw()
    client.starttls()
    client.login(ALICE, PASSWORD)
    return client


def test_commands_pipelined_after_starttls_are_discarded(raw, make_login):
    """CVE-2024-34083: plaintext injected behind STARTTLS must not run inside TLS."""
    make_login(ALICE, PASSWORD)
    client = raw()
    assert client.command(b"EHLO client.test")[-1].startswith(b"250 ")
    client.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.com>\r\nNOOP\r\n")
    assert client.reply()[0].startswith(b"220")
    client.start_tls()
    # The first reply inside TLS answers our own EHLO, not the injected RSET.
    ehlo = client.command(b"EHLO client.test")
    assert ehlo[0] == b"250-mx.test.invalid"
    assert client.command(b"NOOP") == [b"250 2.0.0 OK"]


def test_second_starttls_inside_tls_is_refused(raw):
    client = raw()
    client.starttls()
    client.command(b"EHLO client.test")
    assert client.command(b"STARTTLS") == [b"503 5.5.1 TLS already active"]


@pytest.mark.parametrize(
    "smuggled",
    [
        b"\n.\nMAIL FROM:<evil@example.com>\nRCPT TO:<victim@example.org>\nDATA\nevil\n",
        b"\r\n.\nMAIL FROM:<evil@example.com>\r\n",
        b"\n.\r\nMAIL FROM:<evil@example.com>\r\n",
        b"\r.\r\nMAIL FROM:<evil@example.com>\r\n",
        b"line with a lone \r in it\r\n",
    ],
)
def test_bare_line_endings_in_data_are_refused(authed, smuggled):
    """CVE-2024-27305 / SMTP smuggling: only <CRLF>.<CRLF> ends DATA, and bare CR/LF are refused."""
    authed.command(b"MAIL FROM:<alice@example.com>")
    authed.command(b"RCPT TO:<bob@example.org>")
    assert authed.command(b"DATA")[0].startswith(b"354")
    authed.send(b"Subject: first\r\n\r\nhello" + smuggled + b"rest\r\n.\r\n")
    assert authed.reply() == [
        b"550 5.6.0 Message contains a bare CR or LF; lines must end with CRLF"
    ]
    assert authed.command(b"NOOP") == [b"250 2.0.0 OK"]
    assert not Message.objects.exists()


def test_bare_line_endings_can_be_normalized(authed, settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "BARE_LINE_ENDINGS": "normalize"}
    # Limits are read when a connection opens: this one (made by the fixture) still rejects.
    client = RawClient(authed.server)
    try:
        client.starttls()
        client.login(ALICE, PASSWORD)
        client.command(b"MAIL FROM:<alice@example.com>")
        client.command(b"RCPT TO:<bob@example.org>")
        client.command(b"DATA")
        client.send(b"Subject: x\r\n\r\na\n.\nMAIL FROM:<evil@example.com>\rb\r\n.\r\n")
        assert client.reply()[0].startswith(b"250 2.0.0 OK queued as ")
    finally:
        client.close()
    content = bytes(Message.objects.get().content)
    assert content.endswith(b"Subject: x\r\n\r\na\r\n.\r\nMAIL FROM:<evil@example.com>\r\nb\r\n")
    assert Message.objects.count() == 1  # one message, never two


def test_overlong_command_line(raw):
    client = raw()
    assert client.command(b"EHLO " + b"a" * 5000)[0].startswith(b"500 5.5.2")
    assert client.command(b"NOOP") == [b"250 2.0.0 OK"]


def test_overlong_line_in_auth_exchange_is_one_error_not_a_desync(raw):
    client = raw()
    client.starttls()
    client.command(b"EHLO client.test")
    assert client.command(b"AUTH PLAIN") == [b"334 "]
    # RFC 4954 section 4 allows 12288 octets (room for a token); this is more.
    assert client.command(b"A" * 13000) == [b"500 5.5.6 Authentication exchange line is too long"]
    # The next line is a command again, answered once.
    assert client.command(b"NOOP") == [b"250 2.0.0 OK"]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"NO\x00OP", b"500"),
        (b"\xff\xfe", b"500"),
        (b"EHLO caf\xc3\xa9", b"500"),
        (b"FOOBAR", b"500"),
        (b"", b"500"),
    ],
)
def test_junk_gets_a_5xx(raw, line, code):
    client = raw()
    reply = client.command(line)
    assert reply[0][:3] == code, reply
    assert REPLY.match(reply[0])
    assert client.command(b"NOOP") == [b"250 2.0.0 OK"]


BAD_ADDRESS = re.compile(rb"^(501|553) 5\.1\.[37] ")


@pytest.mark.parametrize(
    "command",
    [
        b"MAIL FROM:<al\x00ice@example.com>",
        b"MAIL FROM:<not-an-address>",
        b"MAIL FROM:<@example.com>",
        b"MAIL FROM:<" + b"a" * 65 + b"@example.com>",
    ],
)
def test_bad_sender_addresses(authed, command):
    reply = authed.command(command)
    assert BAD_ADDRESS.match(reply[0]), reply


def test_bad_and_special_recipients(authed):
    authed.command(b"MAIL FROM:<alice@example.com>")
    for bad in (b"<bob\x01@example.org>", b"<bob>", b"<bob@exa..mple.org>", b"<bob@.org>"):
        reply = authed.command(b"RCPT TO:" + bad)
        assert BAD_ADDRESS.match(reply[0]), (bad, reply)
    assert authed.command(b"RCPT TO:<Postmaster>") == [b"250 2.1.5 Recipient OK"]
    assert authed.command(b"RCPT TO:<bob@[192.0.2.1]>") == [b"250 2.1.5 Recipient OK"]


def test_commands_out_of_order(authed):
    assert authed.command(b"RCPT TO:<bob@example.org>") == [b"503 5.5.1 Error: need MAIL command"]
    assert authed.command(b"DATA") == [b"503 5.5.1 Error: need RCPT command"]
    authed.command(b"MAIL FROM:<alice@example.com>")
    assert authed.command(b"MAIL FROM:<alice@example.com>") == [
        b"503 5.5.1 Error: nested MAIL command"
    ]


def test_too_many_errors_get_421_and_a_close(raw, settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "MAX_ERRORS": 5}
    client = raw()
    # Pipelined: the server must stop answering at the limit, whatever is still queued.
    client.send(b"BOGUS\r\n" * 50)
    replies = [client.reply() for _ in range(6)]
    assert [r[0][:3] for r in replies[:5]] == [b"500"] * 5
    assert replies[5] == [b"421 4.7.0 Too many errors, closing connection"]
    assert client.closed()


def test_unknown_commands_count_as_errors_not_aiosmtpd_502(raw):
    client = raw()
    replies = [client.command(b"XYZZY")[0] for _ in range(10)]
    assert all(r.startswith(b"500 5.5.2") for r in replies)
    assert client.command(b"XYZZY") == [b"421 4.7.0 Too many errors, closing connection"]
    assert client.closed()


def test_thousands_of_pipelined_commands(raw):
    client = raw()
    client.send(b"NOOP\r\n" * 5000 + b"QUIT\r\n")
    replies = [client.reply() for _ in range(5001)]
    assert replies[:5000] == [[b"250 2.0.0 OK"]] * 5000
    assert replies[5000] == [b"221 2.0.0 Bye"]
    assert client.closed()


def test_vrfy_and_expn_reveal_nothing(authed, make_login):
    make_login("bob@example.com", "bobs password here")
    known = authed.command(b"VRFY bob@example.com")
    unknown = authed.command(b"VRFY nobody@example.com")
    assert known == unknown
    assert known[0][:3] == b"252"
    assert authed.command(b"EXPN staff")[0][:3] == b"502"


def test_vrfy_before_auth_is_refused(raw):
    client = raw()
    client.starttls()
    client.command(b"EHLO client.test")
    assert client.command(b"VRFY alice@example.com")[0] == b"530 5.7.0 Authentication required"
