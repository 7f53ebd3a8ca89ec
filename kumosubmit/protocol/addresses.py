"""Envelope address checks (RFC 5321 section 4.1.2), stricter than aiosmtpd's parser.

aiosmtpd accepts ``MAIL FROM:<not an address>`` and addresses with NUL or other
control characters; those must never reach the spool or the next hop.
"""

from __future__ import annotations

MAX_PATH = 256  # RFC 5321 section 4.5.3.1.3, with the angle brackets
MAX_LOCAL_PART = 64  # section 4.5.3.1.1
MAX_DOMAIN = 255  # section 4.5.3.1.2


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
