"""SASL decoding for AUTH PLAIN (RFC 4616) and AUTH LOGIN. Pure functions."""

from __future__ import annotations

import base64
import binascii
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
