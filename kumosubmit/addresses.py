"""Envelope address checks (RFC 5321 section 4.1.2), stricter than aiosmtpd's parser.

aiosmtpd accepts ``MAIL FROM:<not an address>`` and addresses with NUL or other
control characters; those must never reach the spool or the next hop.
"""

from __future__ import annotations

import re

#: The replies to an address that fails these checks (RFC 3463 X.1.7 and X.1.3).
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"

MAX_PATH = 256  # RFC 5321 section 4.5.3.1.3, with the angle brackets
MAX_LOCAL_PART = 64  # section 4.5.3.1.1
MAX_DOMAIN = 255  # section 4.5.3.1.2


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
#: ``<local@domain>`` with both parts dot-atoms (RFC 5322 section 3.2.3), then the rest.
_SIMPLE_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>(.*)", re.DOTALL)


def split_simple_path(arg: str) -> tuple[str, str] | None:
    """``(address, rest)`` for the plain ``<local@domain> rest`` form, else None.

    This is what the email package's full RFC 5322 parser (which aiosmtpd runs
    for every MAIL and RCPT) returns for this form, found with one regex; any
    other form (quoted local parts, comments, address literals, UTF-8, the
    null path) is left to that parser.
    """
    match = _SIMPLE_PATH.fullmatch(arg)
    if match is None:
        return None
    # The parser skips the white space after the path, and comments, which it leaves to
    # itself.
    rest = match.group(2).lstrip(" \t")
    if rest.startswith("("):
        return None
    return match.group(1), rest


def _clean(text: str) -> bool:
    return all(32 < ord(c) < 127 or ord(c) > 159 for c in text)


def is_mailbox(address: str) -> bool:
    """``local@domain`` with sane lengths and no control characters or spaces."""
    if len(address) > MAX_PATH - 2 or not _clean(address):
        return False
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return False
    if len(local) > MAX_LOCAL_PART or len(domain) > MAX_DOMAIN:
        return False
    if domain.startswith("[") != domain.endswith("]"):
        return False
    return not domain.startswith(".") and ".." not in domain


def is_recipient(address: str) -> bool:
    """A mailbox, or the bare ``postmaster`` every server must accept (section 4.1.1.3)."""
    return is_mailbox(address) or address.lower() == "postmaster"
