"""The default spool: a row in the database, committed before the 250.

Each commit is a disk flush (SQLite with ``synchronous=FULL``, PostgreSQL's
WAL): a commit per message would cap a listener at the disk's flush rate and
keep the one database thread busy. Messages that arrive while a commit is
under way, or while another worker process has its turn at a SQLite file,
therefore share the next one (a group commit, as databases do for their own
log): under load one transaction stores many messages, each
session still hears its ``250`` only after the commit that holds its
message, and when idle a message is written at once, with no timer. If a
shared transaction fails, its messages are stored one by one, so a message
the database refuses costs only its own session a ``451``.

On SQLite, the commit also leaves the write-ahead log as it is: SQLite would
otherwise copy the log back into the database file inside the commit that
fills it past 1,000 pages (a checkpoint: about 30 ms for a 20 MB message,
with the other listeners' writers kept waiting for their turn). The group
commit runs that checkpoint itself once about as much has been written, after
the sessions have had their ``250`` and outside the writers' turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
import threading
import weakref
from collections.abc import Iterator
from functools import partial
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field
from django.utils import timezone

from kumosubmit.db import run_db, sqlite_turn, storable
from kumosubmit.signals import message_stored
from kumosubmit.spool.base import BaseSpool, SpooledMessage
from kumosubmit.spool.models import Message

log = logging.getLogger(__name__)

#: Larger contents are streamed in after the row, in pieces of this size (see _streamed).
COPY_CHUNK = 1024 * 1024

#: About how much a listener's spool writes to SQLite's log between checkpoints: its
#: contents, and this much more per message (row, indexes, page headers).
CHECKPOINT_BYTES = 4 * 1024 * 1024
MESSAGE_OVERHEAD = 4096
#: SQLite's own automatic checkpoint, in pages; the spool's commits put it back after them.
SQLITE_AUTOCHECKPOINT = 1000


def _column(value: object, field: str) -> str:
    """A text column's value, cut to its length (the whole value stays in ``meta``)."""
    max_length = Message._meta.get_field(field).max_length
    return str(value or "")[:max_length]


def _streamed(message: SpooledMessage, vendor: str) -> bool:
    """Whether the content goes in after the row, a piece at a time.

    Bound as a parameter, a large content is copied whole on its way in, on top
    of the listener's own copy: psycopg would send a 35 MB bytea as 70 MB of hex
    in a query string built in memory, and SQLite copies the bound value and
    then again the row it builds from it. See :func:`_copy_content` and
    :func:`_write_blob`.
    """
    return vendor in _STREAMERS and len(message.content) > COPY_CHUNK


def _values(message: SpooledMessage, *, streamed: bool) -> dict[str, Any]:
    """The columns the spool sets for ``message``; the others take their defaults."""
    # What the client chose (addresses, the EHLO name in meta, the identities a hook
    # accepted) must fit the row, or the message would get 451 on every retry; the
    # content is stored byte for byte.
    meta = storable(message.meta)
    return {
        "queue_id": message.queue_id,
        "mail_from": _column(storable(message.mail_from), "mail_from"),
        "rcpt_tos": storable(message.rcpt_tos),
        "size": len(message.content),
        "content": b"" if streamed else message.content,
        "authz_id": _column(meta.get("authz_id"), "authz_id"),
        "authn_id": _column(meta.get("authn_id"), "authn_id"),
        "conn_id": _column(meta.get("conn_id"), "conn_id"),
        "meta": meta,
    }


#: Field types whose values go to the database as they are (the spool's own str and int).
_PLAIN_TYPES = frozenset(
    {"CharField", "TextField", "PositiveIntegerField", "PositiveBigIntegerField"}
)


@functools.cache
def _insert_fields() -> tuple[tuple[Field[Any, Any], bool], ...]:
    """Every column an INSERT writes (all but the id), and whether its value goes as it is."""
    return tuple(
        (field, field.get_internal_type() in _PLAIN_TYPES)
        for field in Message._meta.concrete_fields
        if not field.primary_key
    )


def _insert(messages: list[SpooledMessage], db: BaseDatabaseWrapper) -> None:
    """INSERT the rows of ``messages`` in one ``executemany``.

    What ``bulk_create`` does, without building and compiling a query and
    preparing each of a row's 18 values through its field: that took about
    130 µs a message, the database thread's largest cost at 500 messages per
    session (SQLite's own work was a tenth of it). Every column is written, a
    default from its field as the ORM would take it; values that need the
    database's own form (dates, JSON, the content) are prepared by their field.
    ``tests/test_spool_insert.py`` holds the rows to ``bulk_create``'s.
    """
    fields = _insert_fields()
    given = [_values(message, streamed=False) for message in messages]
    now = timezone.now()
    defaults = {
        field.attname: field.get_db_prep_save(
            now if field.attname == "received_at" else field.get_default(), db
        )
        for field, _ in fields
        if field.attname not in given[0]
    }
    rows = [
        [
            defaults[field.attname]
            if field.attname in defaults
            else values[field.attname]
            if plain
            else field.get_db_prep_save(values[field.attname], db)
            for field, plain in fields
        ]
        for values in given
    ]
    quote = db.ops.quote_name
    columns = ", ".join(quote(field.column) for field, _ in fields)
    marks = ", ".join(["%s"] * len(fields))
    with db.cursor() as cursor:
        # Names from the model, quoted; every value is a parameter.
        cursor.executemany(
            f"INSERT INTO {quote(Message._meta.db_table)} ({columns}) VALUES ({marks})",  # noqa: S608
            rows,
        )


def store_together(messages: list[SpooledMessage]) -> None:
    """Store ``messages`` in one transaction, committed when this returns."""
    with sqlite_turn():
        _commit(messages)


def _commit(messages: list[SpooledMessage]) -> None:
    """store_together() once this process has its turn at the database (if it takes turns)."""
    db = connections[DEFAULT_DB_ALIAS]  # the thread's own connection, looked up once
    small: list[SpooledMessage] = []
    large: list[SpooledMessage] = []
    for message in messages:
        (large if _streamed(message, db.vendor) else small).append(message)
    # atomic() so the rows are committed (not merely sent) when this returns, whatever
    # the connection's autocommit state.
    with _checkpoint_deferred(db), transaction.atomic():
        if small:
            _insert(small, db)
        for message in large:
            # The row first, its content after it in pieces (see _streamed).
            row = Message(**_values(message, streamed=True))
            row.save(force_insert=True)
            _STREAMERS[db.vendor](row.pk, message.content)
        for message in messages:
            # After the commit, never before: an observer (the relay in hand-off mode)
            # must find the row. send_robust: a receiver's error cannot cost the 250.
            transaction.on_commit(
                partial(message_stored.send_robust, DatabaseSpool, queue_id=message.queue_id)
            )


@contextlib.contextmanager
def _checkpoint_deferred(db: BaseDatabaseWrapper) -> Iterator[None]:
    """On SQLite, no checkpoint in the commits made inside this (see the module docstring)."""
    if db.vendor != "sqlite":
        yield
        return
    with db.cursor() as cursor:
        cursor.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        yield
    finally:
        # The database thread's other writers (audit records, counters) check as usual.
        with db.cursor() as cursor:
            cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_AUTOCHECKPOINT:d}")


def checkpoint() -> None:
    """Copy SQLite's write-ahead log back into the database file, as far as readers allow.

    PASSIVE: it waits for no reader and no writer; what it cannot copy now, the
    next checkpoint will. Elsewhere, nothing.
    """
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")


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


#: A message handed to the group commit, and the future its session waits on.
_Waiting = tuple[SpooledMessage, "asyncio.Future[None]"]


class _GroupCommit:
    """The messages of one event loop waiting to be stored, and the task that stores them.

    The batch is taken in the database thread once this process has its turn
    at the database (``sqlite_turn``), not when the job is handed over: the
    messages that arrived while another worker was committing join it, instead
    of waiting for a turn of their own (one disk flush for them all).
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        # Appended to by the event loop, taken by the database thread.
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._storing: list[_Waiting] = []  # taken, outcome not yet known
        self._unchecked = 0  # bytes about written since the last checkpoint
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Messages handed in and not yet answered for."""
        with self._lock:
            return len(self._waiting) + len(self._storing)

    async def store(self, message: SpooledMessage) -> None:
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[None] = loop.create_future()
        # Its session may be gone when the outcome comes: that is no unhandled error.
        stored.add_done_callback(lambda future: future.cancelled() or future.exception())
        with self._lock:
            self._waiting.append((message, stored))
        if self._task is None:
            self._task = loop.create_task(self._run(), name="spool-group-commit")
        # shield: a session that goes away meanwhile must not cancel its neighbours' commit.
        await asyncio.shield(stored)

    def take_batch(self) -> list[_Waiting]:
        """The messages waiting now, up to the limits (in the database thread)."""
        with self._lock:
            size = count = 0
            for count, (message, _) in enumerate(self._waiting, 1):
                size += len(message.content)
                if count >= self.max_messages or size >= self.max_bytes:
                    break
            self._storing = self._waiting[:count]
            del self._waiting[:count]
            return self._storing

    async def _run(self) -> None:
        try:
            while self.pending:
                batch, outcomes = await run_db(store_waiting, self)
                for (_, stored), outcome in zip(batch, outcomes, strict=True):
                    if stored.done():
                        continue
                    if outcome is None:
                        stored.set_result(None)
                    else:
                        stored.set_exception(outcome)
                with self._lock:
                    self._storing = []
                self._unchecked += sum(len(m.content) + MESSAGE_OVERHEAD for m, _ in batch)
                if self._unchecked >= CHECKPOINT_BYTES:
                    self._unchecked = 0
                    await self._checkpoint()
        except BaseException as error:
            # Cancelled (the loop is closing) or broken: nobody may wait for ever, and
            # nobody may hear 250 for a message whose commit is not known to have happened.
            with self._lock:
                unanswered = self._storing + self._waiting
                self._storing, self._waiting = [], []
            for _, stored in unanswered:
                if not stored.done():
                    stored.set_exception(RuntimeError("the spool's writer stopped"))
            if not isinstance(error, Exception):
                raise
            log.exception("the spool's writer failed")
        finally:
            self._task = None

    @staticmethod
    async def _checkpoint() -> None:
        """After the sessions have their replies: a failed checkpoint loses nothing."""
        try:
            await run_db(checkpoint)
        except Exception:
            log.warning("could not checkpoint the database's log", exc_info=True)


def store_waiting(group: _GroupCommit) -> tuple[list[_Waiting], list[Exception | None]]:
    """In the database thread: take ``group``'s batch when our turn comes, and store it.

    Its name is the ``operation`` of the ``kumosubmit_db_seconds`` metric.
    """
    with sqlite_turn():
        batch = group.take_batch()
        messages = [message for message, _ in batch]
        try:
            _commit(messages)
            return batch, [None] * len(batch)
        except Exception as error:
            if len(batch) == 1:
                return batch, [error]
    log.warning("could not store %d messages at once; storing each", len(batch))
    return batch, store_each(messages)


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
