"""What hooks see of envelope addresses and messages, after KumoMTA's Lua objects.

:class:`EnvelopeAddress` is KumoMTA's EnvelopeAddress (``user``, ``domain``,
``str()``). :class:`Message` is the message handed to ``smtp_server_data`` and
``smtp_server_message_received``: its envelope, its meta and its content,
which handlers change in place. What they change is what the spool stores,
byte for byte.
"""

from __future__ import annotations

import email.policy
from collections.abc import Iterable
from dataclasses import dataclass
from email.headerregistry import Address
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses
from typing import Any

from django.utils import timezone

from kumosubmit.addresses import is_recipient
from kumosubmit.meta import JsonMeta


@dataclass(frozen=True)
class EnvelopeAddress:
    """An address of the envelope (``""`` for the null sender ``<>``)."""

    address: str

    @property
    def user(self) -> str:
        """The local part."""
        return self.address.rpartition("@")[0] if "@" in self.address else self.address

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2] if "@" in self.address else ""

    @property
    def email(self) -> str:
        return self.address

    def __str__(self) -> str:
        return self.address


def _recipient(value: EnvelopeAddress | str) -> EnvelopeAddress:
    address = str(value)
    if not is_recipient(address):
        raise ValueError(f"{address!r} is not a recipient address")
    return value if isinstance(value, EnvelopeAddress) else EnvelopeAddress(address)


def _header_line(name: str, value: str) -> bytes:
    if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
        raise ValueError(f"{name!r} is not a header field name")
    if "\r" in value or "\n" in value:
        # A folded value is welcome, as long as every line break is CRLF plus white space.
        lines = value.replace("\r\n", "\n").split("\n")
        if any(not line.startswith((" ", "\t")) for line in lines[1:]) or "\r" in "".join(lines):
            raise ValueError(f"the value of {name} has a line break that does not fold it")
        value = "\r\n".join(lines)
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


class Message:
    """One message in the making: envelope, meta, and content.

    ``recipients`` can be changed (a new list, or the list in place) in
    ``smtp_server_data`` only; from the trace header on they are fixed.
    ``content`` is read-only; headers are added with :meth:`prepend_header`
    and :meth:`append_header`. Its meta is conn_meta's keys (as they are when the
    message is stored, so keys a handler sets on conn_meta at these events count
    too) under the message's own (:meth:`set_meta`).
    """

    def __init__(
        self,
        sender: str,
        recipients: Iterable[str],
        content: bytearray,
        conn_meta: dict[str, Any],
    ) -> None:
        self.sender = EnvelopeAddress(sender)
        self._received = tuple(EnvelopeAddress(r) for r in recipients)  # checked at RCPT
        self._recipients: list[EnvelopeAddress] | tuple[EnvelopeAddress, ...] = list(self._received)
        self._content = content  # the session's buffer: changed in place, never copied
        self._conn_meta = conn_meta
        #: The message's own meta (set_meta); over conn_meta's keys when it is stored.
        self.meta = JsonMeta()

    # -- the envelope -----------------------------------------------------------------

    @property
    def recipients(self) -> list[EnvelopeAddress] | tuple[EnvelopeAddress, ...]:
        return self._recipients

    @recipients.setter
    def recipients(self, value: Iterable[EnvelopeAddress | str]) -> None:
        if isinstance(self._recipients, tuple):
            raise AttributeError("recipients can be changed in smtp_server_data only")
        self._recipients = [_recipient(r) for r in value]

    def recipient_list(self) -> list[EnvelopeAddress]:
        """KumoMTA's ``message:recipient_list()``."""
        return list(self._recipients)

    def set_recipient_list(self, recipients: Iterable[EnvelopeAddress | str]) -> None:
        self.recipients = recipients

    def freeze_recipients(self) -> tuple[str, ...]:
        """Check and fix the recipients (after ``smtp_server_data``); their addresses."""
        if not isinstance(self._recipients, tuple):
            recipients = tuple(self._recipients)
            # The ones the session accepted were checked then; a handler's are checked now.
            if recipients != self._received:
                recipients = tuple(_recipient(r) for r in recipients)
            self._recipients = recipients
        return tuple(r.address for r in self._recipients)

    # -- meta ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> Any:
        """The message's own value of ``key``, else its connection's (as KumoMTA copies
        conn_meta into every message's meta)."""
        return self.meta[key] if key in self.meta else self._conn_meta.get(key)

    def set_meta(self, key: str, value: Any) -> None:
        """Set a key of this message's meta (stored with it); ``TypeError`` if not JSON."""
        self.meta.set_meta(key, value)

    def stored_meta(self) -> dict[str, Any]:
        """What is stored: every key of conn_meta as it is now, then the message's own."""
        return {**self._conn_meta, **self.meta}

    # -- content -------------------------------------------------------------------------

    @property
    def content(self) -> bytes:
        """The message as it will be stored (a copy: change it through the header methods)."""
        return bytes(self._content)

    @property
    def buffer(self) -> bytearray:
        """The content itself, for the spool (no copy); handlers use the methods below."""
        return self._content

    @property
    def size(self) -> int:
        return len(self._content)

    def _header_end(self) -> int:
        """Where the header section ends: the index of its closing empty line."""
        content = self._content
        if content.startswith(b"\r\n"):
            return 0
        end = content.find(b"\r\n\r\n")
        return end + 2 if end != -1 else len(content)

    def header_bytes(self) -> bytes:
        return bytes(self._content[: self._header_end()])

    def _headers(self) -> Any:
        return BytesHeaderParser(policy=email.policy.compat32).parsebytes(self.header_bytes())

    def get_first_named_header(self, name: str) -> str | None:
        """The (unfolded) value of the first header field called ``name``, or None."""
        value = self._headers().get(name)
        return None if value is None else " ".join(str(value).split())

    def get_all_named_header(self, name: str) -> list[str]:
        return [" ".join(str(v).split()) for v in self._headers().get_all(name, [])]

    def from_header(self) -> Address | None:
        """The first address of the ``From:`` header (``.username``, ``.domain``,
        ``.addr_spec``, ``.display_name``), or None if there is none."""
        pairs = getaddresses(self._headers().get_all("From", []))
        for display_name, addr_spec in pairs:
            if addr_spec:
                username, _, domain = addr_spec.rpartition("@")
                return Address(display_name=display_name, username=username, domain=domain)
        return None

    def from_addresses(self) -> list[str]:
        """Every address of every ``From:`` header ('' for one that does not parse)."""
        return [address for _, address in getaddresses(self._headers().get_all("From", []))]

    def prepend_header(self, name: str, value: str) -> None:
        """Add a header field at the top (where trace and signature fields go)."""
        self._content[:0] = _header_line(name, value)

    def prepend_raw(self, lines: bytes) -> None:
        """Put complete CRLF-ended header lines at the top (the trace header)."""
        self._content[:0] = lines

    def append_header(self, name: str, value: str) -> None:
        """Add a header field at the end of the header section."""
        end = self._header_end()
        self._content[end:end] = _header_line(name, value)


def _printable(text: str | None) -> str:
    return "".join(c for c in (text or "") if c.isprintable() and c.isascii())[:255]


def trace_header(
    hostname: str, meta: dict[str, Any], recipients: tuple[str, ...], queue_id: str
) -> bytes:
    """The trace header for this hop (RFC 5321 section 4.4; ESMTPSA from RFC 3848)."""
    ip = meta["peer_address"] or "unknown"
    literal = f"IPv6:{ip}" if ":" in ip else ip
    lines = [
        f"Received: from {_printable(meta['ehlo_name']) or 'unknown'} ([{literal}])",
        f"\tby {hostname} (kumosubmit) with ESMTPSA id {queue_id}",
        f"\t(version={meta['tls_version']} cipher={meta['tls_cipher']})",
    ]
    if len(recipients) == 1:
        lines.append(f"\tfor <{_printable(recipients[0])}>")
    lines[-1] += ";"
    lines.append(f"\t{format_datetime(timezone.now())}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
