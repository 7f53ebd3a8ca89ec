"""Fuzzing (hardening issue, item 8): the SASL decoders and the command loop.

Property-based tests (hypothesis, derandomized: the same examples every run)
of the PLAIN and LOGIN decoders, then of whole sessions with a live listener
through real sockets (plaintext, TLS, authenticated), then a short pipelined
burst of random lines. The properties: the decoders raise nothing but
SaslError and round-trip what is valid; every reply line is well-formed
(RFC 5321 section 4.2: a code, a separator, printable text, CRLF) and carries
an enhanced status code where RFC 2034 wants one; every line gets exactly one
reply; the server never hangs up without ``221`` or ``421``; nothing raises
inside the session; and a normal session still works afterwards.
"""

from __future__ import annotations

import base64
import random
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kumosubmit.protocol.sasl import (
    PlainCredentials,
    SaslError,
    decode_base64,
    parse_login_field,
    parse_plain,
)
from kumosubmit.spool.models import Message
from tests.live import LiveSMTPServer, RawClient, plain_blob, quitting

ALICE = "alice@example.com"
PASSWORD = "fuzz: correct password 9Kd#q"

#: Fast, and the same examples on every run and machine.
PURE = settings(max_examples=300, deadline=None, derandomize=True, database=None)
LIVE = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# RFC 5321 section 4.2: Reply-code [ SP / "-" textstring ] CRLF, textstring = HT / SP..~
REPLY_LINE = re.compile(rb"[2-5][0-5]\d([ -][\t\x20-\x7e]*)?\r\n\Z")
# RFC 2034 / RFC 3463: class.subject.detail, the class matching the reply's first digit.
ENHANCED = re.compile(rb"(\d)\d\d[ -]([245])\.\d{1,3}\.\d{1,3}( |\Z)")
B64_ALPHABET = set(string.ascii_letters + string.digits + "+/=")


# -- the SASL decoders (pure) -------------------------------------------------------------

no_nul_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


@PURE
@given(st.text(max_size=80))
def test_decode_base64_raises_only_sasl_error(text):
    try:
        decoded = decode_base64(text)
    except SaslError:
        return
    assert isinstance(decoded, bytes)
    # Strict: only the base64 alphabet gets through.
    assert set(text) <= B64_ALPHABET


@PURE
@given(st.binary(max_size=200))
def test_decode_base64_round_trips(data):
    assert decode_base64(base64.b64encode(data).decode()) == data


@PURE
@given(st.binary(max_size=200))
def test_parse_plain_raises_only_sasl_error(data):
    try:
        credentials = parse_plain(data)
    except SaslError:
        return
    assert isinstance(credentials, PlainCredentials)
    assert credentials.authc and credentials.authz
    assert not any("\x00" in part for part in credentials)
    authz = data.split(b"\x00")[0].decode()
    assert credentials.authz == (authz or credentials.authc)


@PURE
@given(no_nul_text, no_nul_text.filter(bool), no_nul_text)
def test_parse_plain_round_trips(authz, authc, password):
    blob = base64.b64encode(f"{authz}\0{authc}\0{password}".encode()).decode()
    credentials = parse_plain(decode_base64(blob))
    assert credentials == (authz or authc, authc, password)
    # The repr's own text ("PlainCredentials(authz=...") may hold a password by chance.
    without_password = repr(PlainCredentials(authz or authc, authc, ""))
    if len(password) >= 4 and password not in without_password:
        assert password not in repr(credentials)


@PURE
@given(st.binary(max_size=200))
def test_parse_login_field_raises_only_sasl_error(data):
    try:
        field = parse_login_field(data, "password")
    except SaslError:
        assert b"\x00" in data or not _is_utf8(data)
        return
    assert field.encode() == data


@PURE
@given(no_nul_text)
def test_parse_login_field_round_trips(text):
    assert parse_login_field(decode_base64(base64.b64encode(text.encode()).decode()), "x") == text


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- whole sessions with a live listener ------------------------------------------------------

VERBS = [
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "EXPN", "HELP",
    "AUTH", "QUIT", "STARTTLS", "BDAT", "ETRN", "XCLIENT", "PROXY",
]  # fmt: skip
TEMPLATES = [
    b"EHLO client.test",
    b"HELO client.test",
    b"MAIL FROM:<alice@example.com>",
    b"MAIL FROM:<>",
    b"MAIL FROM:<alice@example.com> SIZE=999999999999999999999 BODY=8BITMIME",
    b"MAIL FROM:<alice@example.com> SMTPUTF8",
    b"MAIL FROM:alice@example.com",
    b"RCPT TO:<bob@example.org>",
    b"RCPT TO:<postmaster>",
    b"RCPT TO:<@relay.example:bob@example.org>",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH PLAIN " + plain_blob("", ALICE, PASSWORD).encode(),
    b"AUTH PLAIN =",
    b"AUTH CRAM-MD5",
    b"*",
    b".",
    b"",
]


line_bytes = st.binary(max_size=120).map(lambda b: b.replace(b"\n", b""))
ascii_text = st.text(string.printable.strip(), max_size=60).map(str.encode)
command_lines = st.one_of(
    st.sampled_from(TEMPLATES),
    st.tuples(
        st.sampled_from(VERBS).flatmap(lambda v: st.sampled_from([v, v.lower(), v.title()])),
        st.sampled_from([b" ", b"  ", b"\t", b""]),
        st.one_of(ascii_text, line_bytes),
    ).map(lambda t: t[0].encode() + t[1] + t[2]),
    line_bytes,
    st.binary(min_size=950, max_size=1300).map(lambda b: b.replace(b"\n", b"x")),
)
b64_of_bytes = st.binary(max_size=300).map(lambda b: base64.b64encode(b))
plain_blobs = st.tuples(no_nul_text, no_nul_text, no_nul_text).map(
    lambda t: base64.b64encode("\0".join(t).encode())
)
valid_addresses = st.sampled_from([b"alice@example.com", b"bob@example.org", b"postmaster"])
addresses = st.one_of(valid_addresses, valid_addresses, valid_addresses, ascii_text, line_bytes)
#: What a client might answer to a 334 challenge.
answers_334 = st.one_of(b64_of_bytes, plain_blobs, command_lines, st.sampled_from([b"*", b"="]))
#: A whole transaction, with fuzzed addresses and (in converse) a fuzzed body.
transactions = st.tuples(addresses, addresses, st.sampled_from([b"", b" BODY=8BITMIME"])).map(
    lambda t: [b"RSET", b"MAIL FROM:<" + t[0] + b">" + t[2], b"RCPT TO:<" + t[1] + b">", b"DATA"]
)
auth_exchanges = st.one_of(
    st.sampled_from([[b"AUTH PLAIN"], [b"AUTH LOGIN"], [b"AUTH login"]]),
    st.one_of(b64_of_bytes, plain_blobs).map(lambda blob: [b"AUTH PLAIN " + blob]),
    b64_of_bytes.map(lambda blob: [b"AUTH LOGIN " + blob]),
)


def sessions(kind: str) -> st.SearchStrategy[list[bytes]]:
    """The lines of one session: single commands, AUTH exchanges (until logged in) and
    transactions."""
    parts = [command_lines.map(lambda line: [line]), transactions]
    parts.append(transactions if kind == "authenticated" else auth_exchanges)
    return st.lists(st.one_of(*parts), min_size=1, max_size=8).map(
        lambda parts: [line for part in parts for line in part]
    )


#: A message body, dot-stuffed as a client must (RFC 5321 section 4.5.2).
data_bodies = st.lists(
    st.one_of(ascii_text, line_bytes, st.sampled_from([b".", b"..", b".x", b"Subject: x"])),
    max_size=6,
).map(lambda lines: b"".join(b"." * line.startswith(b".") + line + b"\r\n" for line in lines))


def read_reply(client: RawClient) -> list[bytes]:
    """One whole reply, every line checked; [] if the server closed before it."""
    lines: list[bytes] = []
    while True:
        line = client.reader.readline(4096)
        if not line:
            assert not lines, f"closed in the middle of a reply: {lines}"
            return []
        assert REPLY_LINE.match(line), f"malformed reply line {line!r}"
        if lines:
            assert line[:3] == lines[0][:3], f"codes differ inside a reply: {[*lines, line]}"
        lines.append(line[:-2])
        if line[3:4] != b"-":
            return lines


def check_reply(line: bytes, reply: list[bytes]) -> None:
    final = reply[-1]
    verb = line.partition(b" ")[0].upper()
    # RFC 2034: every 2xx/4xx/5xx reply but the greeting and those to HELO/EHLO.
    # 220 is STARTTLS's, a known bug: test_starttls_reply_carries_an_enhanced_code.
    if final[:1] in b"245" and verb not in (b"EHLO", b"HELO") and final[:3] != b"220":
        match = ENHANCED.match(final)
        assert match, f"no enhanced status code in {final!r} (to {line[:60]!r})"
        assert match.group(1) == match.group(2), f"class differs in {final!r}"


def converse(client: RawClient, lines: list[bytes], answers: st.DataObject) -> bool:
    """Send each line and check its reply; False once the server (rightly) hung up."""
    for line in lines:
        client.send(line + b"\r\n")
        while True:
            reply = read_reply(client)
            assert reply, f"hung up without 221/421 after {line[:60]!r}"
            check_reply(line, reply)
            code = reply[-1][:3]
            if code == b"334":  # an AUTH exchange: answer with a fuzzed line
                line = answers.draw(answers_334, label="answer to 334")
                client.send(line + b"\r\n")
                continue
            if code == b"354":  # a fuzzed body
                line = b"(end of DATA)"
                client.send(answers.draw(data_bodies, label="body") + b".\r\n")
                continue
            break
        if code in (b"221", b"421"):
            assert client.closed(), f"{code!r} but the connection stays open"
            return False
        if code == b"220":  # STARTTLS accepted: go on inside TLS
            client.start_tls()
    return True


def session(server: LiveSMTPServer, kind: str) -> RawClient:
    """A client on the STARTTLS port in plaintext, or on the implicit-TLS port, after EHLO."""
    client = RawClient(server, implicit=kind != "plain")
    client.sock.settimeout(5)
    if kind == "authenticated":
        client.login(ALICE, PASSWORD)  # EHLO, AUTH
    else:
        assert client.command(b"EHLO client.test")[-1] == b"250 HELP"
    return client


def assert_serves(server: LiveSMTPServer, tag: str) -> None:
    with quitting(server.starttls()) as client:
        assert client.login(ALICE, PASSWORD)[0] == 235
        payload = f"Subject: {tag}\r\n\r\nstill works\r\n".encode()
        assert client.sendmail(ALICE, ["bob@example.org"], payload) == {}
    assert any(bytes(m.content).endswith(payload) for m in Message.objects.all())


def assert_nothing_raised(caplog: pytest.LogCaptureFixture) -> None:
    """No exception inside a session (it would be logged as a session error) or the loop."""
    bad = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= 40 and (r.name == "asyncio" or "session error" in r.getMessage())
    ]
    assert not bad, bad


@pytest.mark.parametrize("kind", ["plain", "tls", "authenticated"])
def test_fuzzed_sessions_get_well_formed_replies(
    smtp_server, make_login, lenient_limits, caplog, kind
):
    make_login(ALICE, PASSWORD)

    @LIVE
    @given(sessions(kind), st.data())
    def run(lines, answers):
        client = session(smtp_server, kind)
        try:
            if converse(client, lines, answers):
                # Exactly one reply per line: nothing left over, nothing missing.
                client.send(b"NOOP\r\n")
                assert read_reply(client) == [b"250 2.0.0 OK"]
        finally:
            client.close()

    run()
    assert_serves(smtp_server, f"after-{kind}")
    assert_nothing_raised(caplog)


# -- a pipelined burst of random lines ------------------------------------------------------


def random_lines(rng: random.Random, count: int) -> list[bytes]:
    """Junk and real commands mixed (no STARTTLS: what follows it would be a handshake)."""
    lines = []
    for _ in range(count):
        pick = rng.random()
        if pick < 0.3:
            line = rng.choice([t for t in TEMPLATES if t != b"STARTTLS"])
        elif pick < 0.6:
            verb = rng.choice([v for v in VERBS if v not in ("STARTTLS", "QUIT")])
            line = verb.encode() + b" " + rng.randbytes(rng.randrange(40))
        elif pick < 0.95:
            line = rng.randbytes(rng.randrange(100))
        else:
            line = rng.randbytes(rng.randrange(900, 1400))
        line = line.replace(b"\n", b"")
        if line.partition(b" ")[0].upper() in (b"QUIT", b"STARTTLS"):
            line = b"X" + line
        lines.append(line)
    return lines


@pytest.mark.parametrize(
    ("kind", "lenient"),
    [("plain", True), ("authenticated", True), ("plain", False)],
    ids=["plain", "tls-authenticated", "plain-default-limits"],
)
def test_pipelined_random_burst(smtp_server, make_login, request, caplog, kind, lenient):
    if lenient:
        request.getfixturevalue("lenient_limits")
    make_login(ALICE, PASSWORD)
    rng = random.Random(f"kumosubmit-fuzz-{kind}")
    client = session(smtp_server, kind)
    try:
        client.send(b"\r\n".join(random_lines(rng, 300)) + b"\r\n\r\n.\r\nQUIT\r\n")
        replies = []
        while reply := read_reply(client):
            replies.append(reply)
    finally:
        client.close()
    assert len(replies) >= 10, replies
    last = replies[-1][-1]
    if lenient:
        assert last.startswith(b"221 "), last  # it read everything, up to our QUIT
    else:
        # MAX_ERRORS errors, then 421 and a close: the rest was never answered.
        assert last.startswith(b"421 "), last
        assert len(replies) < 300
    assert_serves(smtp_server, f"after-burst-{kind}")
    assert_nothing_raised(caplog)


# -- bugs found by fuzzing, each reduced to its smallest case ----------------------------


@pytest.mark.parametrize("word", [b"FOO\rBAR", b"X\x00Y", b"\x1b[2J"])
def test_unknown_command_reply_is_printable(smtp_server, word):
    client = RawClient(smtp_server)
    try:
        client.send(word + b"\r\n")
        line = client.reader.readline()
        assert REPLY_LINE.match(line), line
    finally:
        client.close()


def test_starttls_reply_carries_an_enhanced_code(smtp_server):
    client = RawClient(smtp_server)
    try:
        assert client.command(b"EHLO client.test")[-1].startswith(b"250 ")
        reply = client.command(b"STARTTLS")
        assert ENHANCED.match(reply[-1]), reply
    finally:
        client.close()
