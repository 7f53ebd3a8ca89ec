"""RFC 4616 PLAIN and AUTH LOGIN decoding (pure functions)."""

import pytest

from kumosubmit.protocol.sasl import (
    PlainCredentials,
    SaslError,
    decode_base64,
    parse_login_field,
    parse_plain,
)


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        (b"\0alice\0pw", PlainCredentials("alice", "alice", "pw")),
        (b"alice\0alice\0pw", PlainCredentials("alice", "alice", "pw")),
        (b"sales\0alice\0pw", PlainCredentials("sales", "alice", "pw")),
        (b"\0alice\0", PlainCredentials("alice", "alice", "")),
        (
            "\0j\u00f6rg\0p\u00e4ss w\u00f6rd".encode(),
            PlainCredentials("j\u00f6rg", "j\u00f6rg", "p\u00e4ss w\u00f6rd"),
        ),
    ],
)
def test_parse_plain(blob, expected):
    assert parse_plain(blob) == expected


@pytest.mark.parametrize(
    "blob",
    [b"", b"alice", b"\0alice", b"a\0b\0c\0d", b"\0\0pw", b"\0al\xffice\0pw", b"\0alice\0p\xc3"],
)
def test_parse_plain_refuses_malformed(blob):
    with pytest.raises(SaslError):
        parse_plain(blob)


def test_repr_hides_the_password():
    assert "hunter2" not in repr(PlainCredentials("a", "a", "hunter2"))


@pytest.mark.parametrize(("text", "expected"), [("YWJj", b"abc"), ("=", b""), ("", b"")])
def test_decode_base64(text, expected):
    assert decode_base64(text) == expected


@pytest.mark.parametrize("text", ["YWJj!", "YWJ", "Y W J j", "\u00e9\u00e9\u00e9\u00e9", "*"])
def test_decode_base64_is_strict(text):
    with pytest.raises(SaslError):
        decode_base64(text)


def test_login_field_refuses_nul_and_non_utf8():
    assert parse_login_field(b"alice", "user") == "alice"
    for bad in (b"al\0ice", b"\xff"):
        with pytest.raises(SaslError):
            parse_login_field(bad, "user")
