"""SMTP replies, with their enhanced status codes (RFC 3463, RFC 4954, RFC 5248)."""

from __future__ import annotations

import re

# Kept with the address checks they answer; policy replies are with their handlers
# (kumosubmit/policy/, kumosubmit/hooks/events.py).
from kumosubmit.addresses import BAD_RECIPIENT as BAD_RECIPIENT
from kumosubmit.addresses import BAD_SENDER as BAD_SENDER

AUTH_MALFORMED = "501 5.5.2 Cannot decode AUTH response"
AUTH_CANCELLED = "501 5.7.0 Authentication cancelled"
AUTH_UNKNOWN_MECHANISM = "504 5.5.4 Unrecognized authentication type"
AUTH_ALREADY = "503 5.5.1 Already authenticated"
TLS_ALREADY = "503 5.5.1 TLS already active"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
NOT_STORED = "451 4.3.0 Message not stored, please try again later"
INTERNAL_ERROR = "451 4.3.0 Internal server error, please try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, please try again later"
TIMEOUT = "421 4.4.2 Timeout, closing connection"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, please try again later"
TOO_MANY_CONNECTIONS_FROM_YOU = "421 4.7.0 Too many connections from your address"
BAD_HELO = "501 5.5.4 Invalid EHLO/HELO name"
BARE_LINE_ENDING = "550 5.6.0 Message contains a bare CR or LF; lines must end with CRLF"
MESSAGE_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC 5321 section 4.5.3.1.6)"
# RFC 1870 section 6.1 and RFC 3463 X.3.1: no room for the message right now (DATA_MEMORY_BUDGET).
INSUFFICIENT_STORAGE = "452 4.3.1 Insufficient system storage"
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication exchange line is too long"


def queued(queue_id: str) -> str:
    return f"250 2.0.0 OK queued as {queue_id}"


# Enhanced codes for the replies aiosmtpd writes without one. Clients are
# promised one on every reply once ENHANCEDSTATUSCODES is advertised (RFC 2034).
_DEFAULT_ENHANCED = {
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.5.0",
    "421": "4.3.0",
    "450": "4.0.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


# Replies aiosmtpd words itself that need an enhanced code the table cannot give.
_REWORDED = {"220 Ready to start TLS": "220 2.0.0 Ready to start TLS"}
_UNPRINTABLE = re.compile(r"[^\t\x20-\x7e]")


def printable(reply: str) -> str:
    """``reply`` without control characters (aiosmtpd echoes the client's command)."""
    return _UNPRINTABLE.sub("?", reply)


def with_enhanced_code(reply: str) -> str:
    """Add the enhanced status code a reply lacks (a reply that has one is kept)."""
    if reply in _REWORDED:
        return _REWORDED[reply]
    code = reply[:3]
    enhanced = _DEFAULT_ENHANCED.get(code)
    if enhanced is None or _HAS_ENHANCED.match(reply):
        return reply
    sep, text = reply[3:4] or " ", reply[4:]
    return f"{code}{sep}{enhanced} {text}".rstrip()
