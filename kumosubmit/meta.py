"""``conn_meta``: what is known about one SMTP connection.

One ``ConnectionMeta`` exists per connection and is passed to every hook of
that connection, as KumoMTA passes its ``conn_meta`` "to share state between
the various SMTP listener event handlers". It is a dict of JSON values, with
KumoMTA's ``get_meta``/``set_meta`` beside dict access, so hooks can add their
own keys; all of it is stored in the audit row, and copied into the meta of
every message the connection hands over. It never holds a password.

KumoMTA's predefined names are kept as keys too (``received_from``,
``received_via``, ``reception_protocol``, ``hostname``, ``ehlo_domain``,
``tls_protocol_version``, ``tls_cipher``, ``authn_id``, ``authz_id``), beside
kumosubmit's own (``peer_address``, ``ehlo_name``, ``tls_version`` ...), which
the audit table's columns are made from.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import datetime
from typing import Any

from django.utils import timezone

from kumosubmit import metrics

#: Outcomes of an AUTH attempt, as stored in conn_meta and the audit table.
AUTH_SUCCESS = "success"
AUTH_FAILURE = "failure"
AUTH_ERROR = "error"  # a handler raised or returned nonsense: 454, never an accept
AUTH_ABORTED = "aborted"  # malformed or cancelled exchange: 501
AUTH_BLOCKED = "blocked"  # refused by a brute-force block before any password check
AUTH_BUSY = "busy"  # refused (454) before any password check: its argon2 lane was full


def check_json(key: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is JSON (what the audit row and spool can keep)."""
    if not isinstance(key, str):
        raise TypeError(f"meta keys are strings, not {type(key).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"meta value for {key!r} is not JSON: {error}") from None


def socket_text(address: str | None, port: int | None) -> str | None:
    """``ip:port`` as KumoMTA writes a socket address (``[v6]:port`` for IPv6)."""
    if address is None:
        return None
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port is not None else host


class JsonMeta(dict[str, Any]):
    """A dict that only takes JSON values, with KumoMTA's ``get_meta``/``set_meta``."""

    def __setitem__(self, key: str, value: Any) -> None:
        check_json(key, value)
        super().__setitem__(key, value)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(
        self, other: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kw: Any
    ) -> None:
        for key, value in dict(other, **kw).items():
            self[key] = value

    def get_meta(self, key: str) -> Any:
        """The value of ``key``, or None (KumoMTA's ``get_meta``)."""
        return self.get(key)

    def set_meta(self, key: str, value: Any) -> None:
        """Set ``key``; a value that is not JSON is refused with ``TypeError``."""
        self[key] = value


class ConnectionMeta(JsonMeta):
    """Per-connection metadata shared by all hooks (a dict of JSON values).

    Besides the dict, attributes that are never stored: ``transaction``, the
    current mail transaction as the hooks saw it (sender and accepted
    recipients); ``cache``, objects a handler keeps for the connection (the
    built-in sender policy keeps the login's allowed senders there); and
    ``on_close``, functions the server calls (with no argument) when the
    connection ends, whatever ended it; one may return a coroutine, which runs
    as background work that a shutdown waits for (the sending limits give back
    what an unfinished transaction had reserved, and what the connection held).
    """

    def __init__(
        self,
        *,
        peer: tuple[str, int] | None,
        local: tuple[str, int] | None,
        listener: str,
        hostname: str | None = None,
    ) -> None:
        started = timezone.now()
        super().__init__()
        dict.update(
            self,
            conn_id=uuid.uuid4().hex,
            listener=listener,
            pid=os.getpid(),  # which runsmtpd worker process served it
            hostname=hostname,
            started_at=started.isoformat(),
            tls_version=None,
            tls_cipher=None,
            tls_protocol_version=None,
            ehlo_name=None,
            ehlo_domain=None,
            reception_protocol=None,
            auth_attempts=[],
            messages_accepted=0,
            bytes_accepted=0,
        )
        self.set_peer(*(peer or (None, None)))
        self.set_local(*(local or (None, None)))
        self.started = started  # the aware datetimes, for the audit row
        self.ended: datetime | None = None
        self.transaction: Any = None  # kumosubmit.hooks.events.Transaction, once MAIL FROM ran
        self.cache: dict[str, Any] = {}
        self.on_close: list[Callable[[], Coroutine[Any, Any, None] | None]] = []

    def set_peer(self, address: str | None, port: int | None) -> None:
        """The client (after a PROXY header, the real one)."""
        self["peer_address"] = address
        self["peer_port"] = port
        self["received_from"] = socket_text(address, port)

    def set_local(self, address: str | None, port: int | None) -> None:
        self["local_address"] = address
        self["local_port"] = port
        self["received_via"] = socket_text(address, port)

    def set_ehlo(self, domain: str, *, extended: bool) -> None:
        self["ehlo_name"] = self["ehlo_domain"] = domain
        self["reception_protocol"] = "ESMTP" if extended else "SMTP"

    def set_tls(self, version: str | None, cipher: str | None) -> None:
        self["tls_version"] = self["tls_protocol_version"] = version
        self["tls_cipher"] = cipher

    def note_auth_lane(self, lane: str) -> None:
        """The argon2 lane the current AUTH attempt took (kumosubmit/policy/lanes.py): kept
        in the attempt's record and as ``auth_lane``, the lane of the latest attempt."""
        self.cache["auth_lane"] = lane
        self["auth_lane"] = lane

    def record_auth(self, mechanism: str, authz: str, authc: str, outcome: str) -> None:
        """Note one AUTH attempt (never its password); on success, the identities."""
        metrics.auth_attempt(mechanism, outcome)
        attempt = {
            "mechanism": mechanism,
            "authc": authc,
            "authz": authz,
            "outcome": outcome,
            "at": timezone.now().isoformat(),
        }
        lane = self.cache.pop("auth_lane", None)
        if lane is not None:
            attempt["lane"] = lane
        self["auth_attempts"].append(attempt)
        if outcome == AUTH_SUCCESS:
            self["authz_id"] = authz
            self["authn_id"] = authc

    def record_message(self, size: int) -> None:
        metrics.message_accepted(size)
        # Integers: no JSON check needed (this runs for every message).
        dict.__setitem__(self, "messages_accepted", self["messages_accepted"] + 1)
        dict.__setitem__(self, "bytes_accepted", self["bytes_accepted"] + size)

    @property
    def last_auth(self) -> dict[str, Any] | None:
        attempts: list[dict[str, Any]] = self["auth_attempts"]
        return attempts[-1] if attempts else None
