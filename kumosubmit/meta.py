"""``conn_meta``: what is known about one SMTP connection.

One ``ConnectionMeta`` exists per connection and is passed to every hook of
that connection, as KumoMTA passes its ``conn_meta``. It is a dict of
JSON-friendly values so hooks can add their own keys and the whole of it can
be stored in the audit table. It never holds a password.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Any

from django.utils import timezone

from kumosubmit import metrics

#: Outcomes of an AUTH attempt, as stored in conn_meta and the audit table.
AUTH_SUCCESS = "success"
AUTH_FAILURE = "failure"
AUTH_ERROR = "error"  # the hook raised or returned nonsense: 454, never an accept
AUTH_ABORTED = "aborted"  # malformed or cancelled exchange: 501
AUTH_BLOCKED = "blocked"  # refused by a brute-force block before any password check


class ConnectionMeta(dict[str, Any]):
    """Per-connection metadata shared by all hooks (a dict; hooks may add keys)."""

    def __init__(
        self,
        *,
        peer: tuple[str, int] | None,
        local: tuple[str, int] | None,
        listener: str,
    ) -> None:
        started = timezone.now()
        super().__init__(
            conn_id=uuid.uuid4().hex,
            listener=listener,
            pid=os.getpid(),  # which runsmtpd worker process served it
            peer_address=peer[0] if peer else None,
            peer_port=peer[1] if peer else None,
            local_address=local[0] if local else None,
            local_port=local[1] if local else None,
            started_at=started.isoformat(),
            tls_version=None,
            tls_cipher=None,
            ehlo_name=None,
            auth_attempts=[],
            messages_accepted=0,
            bytes_accepted=0,
        )
        self.started = started  # the aware datetimes, for the audit row
        self.ended: datetime | None = None

    def set_tls(self, version: str | None, cipher: str | None) -> None:
        self["tls_version"] = version
        self["tls_cipher"] = cipher

    def record_auth(self, mechanism: str, authz: str, authc: str, outcome: str) -> None:
        """Note one AUTH attempt (never its password); on success, the identities."""
        metrics.auth_attempt(mechanism, outcome)
        self["auth_attempts"].append(
            {
                "mechanism": mechanism,
                "authc": authc,
                "authz": authz,
                "outcome": outcome,
                "at": timezone.now().isoformat(),
            }
        )
        if outcome == AUTH_SUCCESS:
            self["authz_id"] = authz
            self["authn_id"] = authc

    def record_message(self, size: int) -> None:
        metrics.message_accepted(size)
        self["messages_accepted"] += 1
        self["bytes_accepted"] += size

    @property
    def last_auth(self) -> dict[str, Any] | None:
        attempts: list[dict[str, Any]] = self["auth_attempts"]
        return attempts[-1] if attempts else None
