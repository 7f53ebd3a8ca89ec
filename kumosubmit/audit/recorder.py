"""Writing the audit rows of finished connections, batched, without ever breaking a session.

A busy listener ends hundreds of connections a second. One transaction per
audit row would cost the database thread (and SQLite's single writer) a
commit each, in the way of the messages waiting to be stored. Rows wait in
:class:`AuditWriter` instead; one write stores all that gathered while the
previous one ran, so under load the rows share commits, and when idle a row
is written at once (no timer delays it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from django.utils import timezone

from kumosubmit.audit.models import AuthOutcome, ConnectionRecord
from kumosubmit.db import run_db, sqlite_turn, storable
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
        ended_at=getattr(meta, "ended", None) or timezone.now(),
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
        auth_lane=str(last.get("lane") or "")[:8],
        auth_attempts=len(data["auth_attempts"]),
        messages_accepted=data["messages_accepted"],
        bytes_accepted=data["bytes_accepted"],
        meta=data,
    )


def insert_audit_rows(records: list[ConnectionRecord]) -> None:
    with sqlite_turn():
        ConnectionRecord.objects.bulk_create(records)


def _records(metas: list[ConnectionMeta]) -> list[ConnectionRecord]:
    """The rows of ``metas`` (built in the database thread: a batch is CPU work the loop
    should not wait for); one that cannot be built is logged and left out."""
    records: list[ConnectionRecord] = []
    for meta in metas:
        try:
            records.append(record_for(meta))
        except Exception:
            log.exception("could not write the audit record of connection %s", meta.get("conn_id"))
    return records


def write_audit_rows(metas: list[ConnectionMeta]) -> list[ConnectionRecord]:
    """Build the rows of ``metas`` and insert them in one transaction; the rows to try
    again each on its own if that fails (none if it worked, or if there was just one)."""
    records = _records(metas)
    try:
        insert_audit_rows(records)
    except Exception:
        if len(records) == 1:
            log.exception("could not write the audit record of connection %s", records[0].conn_id)
            return []
        log.warning("could not write %d audit records at once; trying each", len(records))
        return records
    return []


async def _store(metas: list[ConnectionMeta]) -> None:
    """Store these rows in one transaction; if that fails, each on its own.

    One trip to the database thread in the usual case, even for a single row. The
    sessions have ended by now: a failure (the database down or locked) costs the rows
    it could not write, which the log says, and nothing else.
    """
    try:
        records = await run_db(write_audit_rows, metas)
    except Exception:
        log.exception("could not write %d audit records", len(metas))
        return
    for record in records:
        try:
            # Through insert_audit_rows even alone: its turn at SQLite's writer (a plain
            # save() would sleep and retry while another process writes, and every
            # message queued behind it in the database thread would wait too).
            await run_db(insert_audit_rows, [record])
        except Exception:
            log.exception("could not write the audit record of connection %s", record.conn_id)


class AuditWriter:
    """The audit rows of one listener process, written in batches by one background task."""

    #: Most rows in one INSERT.
    BATCH = 500

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._spawn = spawn  # runs a task that shutdown waits for
        self._pending: list[ConnectionMeta] = []
        self._writing = False

    def submit(self, meta: ConnectionMeta) -> None:
        """Queue the row of a finished connection; never raises, never waits."""
        meta.ended = timezone.now()
        self._pending.append(meta)
        if not self._writing:
            self._writing = True
            self._spawn(self._drain())

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.BATCH]
                del self._pending[: self.BATCH]
                await _store(batch)
                await asyncio.sleep(0)  # let the rows of connections ending meanwhile gather
        finally:
            self._writing = False
