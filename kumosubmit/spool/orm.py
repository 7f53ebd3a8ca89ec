"""The default spool: a row in the database, committed before the 250.

Each commit is a disk flush (SQLite with ``synchronous=FULL``, PostgreSQL's
WAL): a commit per message would cap a listener at the disk's flush rate and
keep the one database thread busy. Messages that arrive while a commit is
under way therefore share the next one (a group commit, as databases do for
their own log): under load one transaction stores many messages, each
session still hears its ``250`` only after the commit that holds its
message, and when idle a message is written at once, with no timer. If a
shared transaction fails, its messages are stored one by one, so a message
the database refuses costs only its own session a ``451``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref
from functools import partial

from django.db import connection, transaction

from kumosubmit.db import run_db, sqlite_turn, storable
from kumosubmit.signals import message_stored
from kumosubmit.spool.base import BaseSpool, SpooledMessage
from kumosubmit.spool.models import Message

log = logging.getLogger(__name__)

#: Larger contents are streamed in after the row, in pieces of this size (see _streamed).
COPY_CHUNK = 1024 * 1024


def _column(value: object, field: str) -> str:
    """A text column's value, cut to its length (the whole value stays in ``meta``)."""
    max_length = Message._meta.get_field(field).max_length
    return str(value or "")[:max_length]


def _streamed(message: SpooledMessage) -> bool:
    """Whether the content goes in after the row, a piece at a time.

    Bound as a parameter, a large content is copied whole on its way in, on top
    of the listener's own copy: psycopg would send a 35 MB bytea as 70 MB of hex
    in a query string built in memory, and SQLite copies the bound value and
    then again the row it builds from it. See :func:`_copy_content` and
    :func:`_write_blob`.
    """
    return connection.vendor in _STREAMERS and len(message.content) > COPY_CHUNK


def _row(message: SpooledMessage) -> Message:
    # What the client chose (addresses, the EHLO name in meta, the identities a hook
    # accepted) must fit the row, or the message would get 451 on every retry; the
    # content is stored byte for byte.
    meta = storable(message.meta)
    return Message(
        queue_id=message.queue_id,
        mail_from=_column(storable(message.mail_from), "mail_from"),
        rcpt_tos=storable(message.rcpt_tos),
        size=len(message.content),
        content=b"" if _streamed(message) else message.content,
        authz_id=_column(meta.get("authz_id"), "authz_id"),
        authn_id=_column(meta.get("authn_id"), "authn_id"),
        conn_id=_column(meta.get("conn_id"), "conn_id"),
        meta=meta,
    )


def store_together(messages: list[SpooledMessage]) -> None:
    """Store ``messages`` in one transaction, committed when this returns."""
    # atomic() so the rows are committed (not merely sent) when this returns, whatever
    # the connection's autocommit state.
    with sqlite_turn(), transaction.atomic():
        rows = Message.objects.bulk_create([_row(message) for message in messages])
        for row, message in zip(rows, messages, strict=True):
            if _streamed(message):
                _STREAMERS[connection.vendor](row.pk, message.content)
        for message in messages:
            # After the commit, never before: an observer (the relay in hand-off mode)
            # must find the row. send_robust: a receiver's error cannot cost the 250.
            transaction.on_commit(
                partial(message_stored.send_robust, DatabaseSpool, queue_id=message.queue_id)
            )


def _copy_content(pk: int, content: bytes | bytearray) -> None:
    """Set the row's content through COPY, in pieces (PostgreSQL).

    Bound as a parameter, even in binary, psycopg and libpq would each copy the
    whole message into a buffer of their own: three copies in memory at once.
    COPY FROM STDIN (binary format) sends it a piece at a time into a temporary
    table (emptied at commit, and before each use), and the UPDATE moves it on
    the server.
    """
    table = connection.ops.quote_name(Message._meta.db_table)
    view = memoryview(content)
    with connection.connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS kumosubmit_upload (content bytea) "
            "ON COMMIT DELETE ROWS"
        )
        cursor.execute("DELETE FROM kumosubmit_upload")  # an earlier message of this batch
        with cursor.copy("COPY kumosubmit_upload (content) FROM STDIN (FORMAT BINARY)") as copy:
            # The binary COPY format: signature, flags, header extension; one row of one
            # field (its length, then its bytes); the end marker.
            copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
            copy.write(struct.pack("!hi", 1, len(view)))
            for start in range(0, len(view), COPY_CHUNK):
                copy.write(view[start : start + COPY_CHUNK])
            copy.write(struct.pack("!h", -1))
        # The table name is the model's own, quoted; the row id is a parameter.
        cursor.execute(
            f"UPDATE {table} SET content = (SELECT content FROM kumosubmit_upload) "  # noqa: S608
            "WHERE id = %s",
            [pk],
        )


def _write_blob(pk: int, content: bytes | bytearray) -> None:
    """Set the row's content through SQLite's incremental blob I/O, in pieces.

    ``zeroblob(N)`` as a row's last column is written without the N zeros being
    built in memory (migration 0006 puts ``content`` last); the pieces then go
    straight from the listener's buffer into the database's pages, which spill
    to the WAL as the page cache fills.
    """
    table = Message._meta.db_table
    view = memoryview(content)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {connection.ops.quote_name(table)} SET content = zeroblob(%s) "  # noqa: S608
            "WHERE id = %s",
            [len(view), pk],
        )
    with connection.connection.blobopen(table, "content", pk) as blob:
        for start in range(0, len(view), COPY_CHUNK):
            blob.write(view[start : start + COPY_CHUNK])


#: How each database takes a large content in after its row.
_STREAMERS = {"postgresql": _copy_content, "sqlite": _write_blob}


def store_each(messages: list[SpooledMessage]) -> list[Exception | None]:
    """Store each message in its own transaction; what each one failed with, if it did."""
    outcomes: list[Exception | None] = []
    for message in messages:
        try:
            store_together([message])
            outcomes.append(None)
        except Exception as error:
            outcomes.append(error)
    return outcomes


class _GroupCommit:
    """The messages of one event loop waiting to be stored, and the task that stores them."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._waiting: list[tuple[SpooledMessage, asyncio.Future[None]]] = []
        self._storing = 0  # messages in the transaction under way
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Messages handed in and not yet answered for."""
        return len(self._waiting) + self._storing

    async def store(self, message: SpooledMessage) -> None:
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[None] = loop.create_future()
        # Its session may be gone when the outcome comes: that is no unhandled error.
        stored.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._waiting.append((message, stored))
        if self._task is None:
            self._task = loop.create_task(self._run(), name="spool-group-commit")
        # shield: a session that goes away meanwhile must not cancel its neighbours' commit.
        await asyncio.shield(stored)

    def _next_batch(self) -> list[tuple[SpooledMessage, asyncio.Future[None]]]:
        size = count = 0
        for count, (message, _) in enumerate(self._waiting, 1):
            size += len(message.content)
            if count >= self.max_messages or size >= self.max_bytes:
                break
        batch = self._waiting[:count]
        del self._waiting[:count]
        return batch

    async def _run(self) -> None:
        batch: list[tuple[SpooledMessage, asyncio.Future[None]]] = []
        try:
            while self._waiting:
                batch = self._next_batch()
                self._storing = len(batch)
                messages = [message for message, _ in batch]
                try:
                    await run_db(store_together, messages)
                    outcomes: list[Exception | None] = [None] * len(batch)
                except Exception as error:
                    if len(batch) == 1:
                        outcomes = [error]
                    else:
                        log.warning("could not store %d messages at once; storing each", len(batch))
                        outcomes = await run_db(store_each, messages)
                for (_, stored), outcome in zip(batch, outcomes, strict=True):
                    if stored.done():
                        continue
                    if outcome is None:
                        stored.set_result(None)
                    else:
                        stored.set_exception(outcome)
                self._storing = 0
        except BaseException as error:
            # Cancelled (the loop is closing) or broken: nobody may wait for ever, and
            # nobody may hear 250 for a message whose commit is not known to have happened.
            for _, stored in batch + self._waiting:
                if not stored.done():
                    stored.set_exception(RuntimeError("the spool's writer stopped"))
            self._waiting.clear()
            self._storing = 0
            if not isinstance(error, Exception):
                raise
            log.exception("the spool's writer failed")
        finally:
            self._task = None


class DatabaseSpool(BaseSpool):
    """Keeps each message as a :class:`~kumosubmit.spool.models.Message` row.

    Messages arriving together share a transaction (module docstring).
    """

    #: Most messages, and about the most bytes, one transaction stores.
    MAX_MESSAGES_PER_COMMIT = 100
    MAX_BYTES_PER_COMMIT = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GroupCommit] = (
            weakref.WeakKeyDictionary()
        )

    async def store(self, message: SpooledMessage) -> None:
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = _GroupCommit(
                self.MAX_MESSAGES_PER_COMMIT, self.MAX_BYTES_PER_COMMIT
            )
        await group.store(message)

    def pending(self) -> int:
        """Messages of the running event loop handed in and not yet answered for."""
        group = self._groups.get(asyncio.get_running_loop())
        return group.pending if group else 0
