"""Writing the audit row for a finished connection, without ever breaking a session."""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from kumosubmit.audit.models import AuthOutcome, ConnectionRecord
from kumosubmit.db import run_db, storable
from kumosubmit.meta import ConnectionMeta

log = logging.getLogger(__name__)


def record_for(meta: ConnectionMeta) -> ConnectionRecord:
    """The audit row for ``meta``: queried fields as columns, all of it as JSON.

    Everything the client chose (the EHLO name, the login it tried, whatever a
    hook stored) goes through :func:`~kumosubmit.db.storable` first: a NUL in
    an EHLO name must not cost the connection its audit row on PostgreSQL.
    """
    data: dict[str, Any] = storable(dict(meta))
    last: dict[str, Any] = storable(meta.last_auth or {})
    return ConnectionRecord(
        conn_id=data["conn_id"],
        started_at=meta.started,
        ended_at=timezone.now(),
        listener=data["listener"],
        peer_address=data["peer_address"],
        peer_port=data["peer_port"],
        local_address=data["local_address"],
        local_port=data["local_port"],
        tls_version=data["tls_version"] or "",
        tls_cipher=data["tls_cipher"] or "",
        ehlo_name=(data["ehlo_name"] or "")[:255],
        auth_mechanism=last.get("mechanism", ""),
        authc=(last.get("authc") or "")[:255],
        authz=(last.get("authz") or "")[:255],
        auth_outcome=last.get("outcome", AuthOutcome.NONE),
        auth_attempts=len(data["auth_attempts"]),
        messages_accepted=data["messages_accepted"],
        bytes_accepted=data["bytes_accepted"],
        meta=data,
    )


async def write(meta: ConnectionMeta) -> None:
    """Store the audit row; log and swallow any failure.

    The session has ended by now: a failure (the database down or locked) costs
    this row, which the log line says, and nothing else.
    """
    try:
        record = record_for(meta)
        await run_db(record.save)
    except Exception:
        log.exception("could not write the audit record of connection %s", meta.get("conn_id"))
