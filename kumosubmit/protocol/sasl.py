"""SASL decoding for AUTH PLAIN (RFC 4616), LOGIN, OAUTHBEARER (RFC 7628) and XOAUTH2. Pure."""

from __future__ import annotations

import base64
import binascii
import re
from typing import NamedTuple


class SaslError(ValueError):
    """The client's SASL data is malformed (reply 501 5.5.2)."""


class PlainCredentials(NamedTuple):
    authz: str
    authc: str
    password: str

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"PlainCredentials(authz={self.authz!r}, authc={self.authc!r}, password=***)"


def decode_base64(text: str) -> bytes:
    """Strict base64 (RFC 4648): no stray characters, correct padding.

    A lone ``=`` is an empty initial response (RFC 4954 section 4).
    """
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as error:
        raise SaslError("invalid base64") from error


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SaslError(f"{what} is not UTF-8") from error


def parse_plain(message: bytes) -> PlainCredentials:
    """Split ``[authzid] NUL authcid NUL passwd`` (RFC 4616 section 2).

    An empty authzid means "act as authcid", so the result always carries
    one: the handler sees the identity it authorizes. The password may be
    empty here (the handler refuses it with 535); authcid may not.
    """
    parts = message.split(b"\x00")
    if len(parts) != 3:
        raise SaslError("expected authzid NUL authcid NUL passwd")
    authz, authc, password = (
        _utf8(p, name) for p, name in zip(parts, ("authzid", "authcid", "passwd"), strict=True)
    )
    if not authc:
        raise SaslError("empty authcid")
    return PlainCredentials(authz or authc, authc, password)


def parse_login_field(message: bytes, what: str) -> str:
    """One AUTH LOGIN answer (user name or password): UTF-8 without NUL."""
    if b"\x00" in message:
        raise SaslError(f"{what} contains NUL")
    return _utf8(message, what)


class BearerCredentials(NamedTuple):
    """What AUTH OAUTHBEARER or XOAUTH2 carries: the identity asked for and the token."""

    authz: str
    token: str

    def __repr__(self) -> str:  # never show the token, even in a traceback
        return f"BearerCredentials(authz={self.authz!r}, token=***)"


#: RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: RFC 7628 section 3.1: the client's answer to the error challenge is a lone kvsep.
OAUTH_DUMMY_RESPONSE = b"\x01"


def _bearer(value: str) -> str:
    """The token of an ``auth`` value: ``Bearer <token>`` (the scheme in any case)."""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not _B64TOKEN.fullmatch(token):
        raise SaslError("expected auth=Bearer <token>")
    return token


def _saslname(value: str) -> str:
    """RFC 5801 section 4: ``=2C`` is ``,`` and ``=3D`` is ``=``; any other ``=`` is an error."""
    if re.search(r"=(?!2C|3D)", value):
        raise SaslError("bad escape in the authorization identity")
    return value.replace("=2C", ",").replace("=3D", "=")


def parse_oauthbearer(message: bytes) -> BearerCredentials:
    """RFC 7628 section 3.1: ``gs2-header kvsep *(key=value kvsep) kvsep``.

    The GS2 header is ``n,`` (or ``y,``: the client could have bound a channel,
    and none is offered), then ``a=<authzid>`` or nothing, then ``,``. The
    authzid may be empty: the token's own identity is meant. Channel binding
    (``p=``) is not supported (RFC 7628 offers no -PLUS variant).
    """
    text = _utf8(message, "OAUTHBEARER message")
    if not text.endswith("\x01\x01"):
        raise SaslError("expected the message to end with two kvsep")
    header, sep, rest = text.partition("\x01")
    if not sep:
        raise SaslError("no kvsep after the GS2 header")
    parts = header.split(",")
    if len(parts) != 3 or parts[0] not in ("n", "y") or parts[2]:
        raise SaslError("bad GS2 header")
    authz = ""
    if parts[1]:
        if not parts[1].startswith("a="):
            raise SaslError("bad GS2 header")
        authz = _saslname(parts[1][2:])
    pairs = rest[:-1].split("\x01")[:-1]  # each kvpair ends with a kvsep; one closes
    token = None
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.isalpha():
            raise SaslError("bad key=value pair")
        if key == "auth":
            token = _bearer(value)
    if token is None:
        raise SaslError("no auth=Bearer pair")
    return BearerCredentials(authz, token)


def parse_xoauth2(message: bytes) -> BearerCredentials:
    """Google's XOAUTH2: ``user=<name>\\x01auth=Bearer <token>\\x01\\x01``.

    See https://developers.google.com/gmail/imap/xoauth2-protocol; the user is
    the identity asked for, as OAUTHBEARER's authzid.
    """
    text = _utf8(message, "XOAUTH2 message")
    if not text.endswith("\x01\x01"):
        raise SaslError("expected the message to end with two ^A")
    fields = dict(pair.partition("=")[::2] for pair in text[:-2].split("\x01"))
    if set(fields) != {"user", "auth"}:
        raise SaslError("expected user= and auth=")
    return BearerCredentials(fields["user"], _bearer(fields["auth"]))
