"""The default spool: a row in the database, committed before the 250."""

from __future__ import annotations

import struct
from functools import partial

from django.db import connection, transaction

from kumosubmit.db import run_db, storable
from kumosubmit.signals import message_stored
from kumosubmit.spool.base import BaseSpool, SpooledMessage
from kumosubmit.spool.models import Message

#: Bytes sent per COPY message when a large message is streamed into PostgreSQL.
COPY_CHUNK = 1024 * 1024


def _column(value: object, field: str) -> str:
    """A text column's value, cut to its length (the whole value stays in ``meta``)."""
    max_length = Message._meta.get_field(field).max_length
    return str(value or "")[:max_length]


class DatabaseSpool(BaseSpool):
    """Keeps each message as a :class:`~kumosubmit.spool.models.Message` row."""

    async def store(self, message: SpooledMessage) -> None:
        await run_db(self._store, message)

    @staticmethod
    def _store(message: SpooledMessage) -> None:
        # What the client chose (addresses, the EHLO name in meta, the identities a
        # hook accepted) must fit the row, or the message would get 451 on every
        # retry; the content is stored byte for byte.
        meta = storable(message.meta)
        # atomic() so the row is committed (not merely sent) when this returns,
        # whatever the connection's autocommit state.
        content = message.content
        # Django binds parameters on the client with psycopg: a 35 MB bytea would be
        # sent as 70 MB of hex inside a query string built in memory. A large message
        # is streamed in afterwards instead (_copy_content).
        streamed = connection.vendor == "postgresql" and len(content) > COPY_CHUNK
        with transaction.atomic():
            row = Message.objects.create(
                queue_id=message.queue_id,
                mail_from=_column(storable(message.mail_from), "mail_from"),
                rcpt_tos=storable(message.rcpt_tos),
                size=len(content),
                content=b"" if streamed else content,
                authz_id=_column(meta.get("authz_id"), "authz_id"),
                authn_id=_column(meta.get("authn_id"), "authn_id"),
                conn_id=_column(meta.get("conn_id"), "conn_id"),
                meta=meta,
            )
            if streamed:
                _copy_content(row.pk, content)
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
    table (emptied at commit), and the UPDATE moves it on the server.
    """
    table = connection.ops.quote_name(Message._meta.db_table)
    view = memoryview(content)
    with connection.connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS kumosubmit_upload (content bytea) "
            "ON COMMIT DELETE ROWS"
        )
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
