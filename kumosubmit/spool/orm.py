"""The default spool: a row in the database, committed before the 250."""

from __future__ import annotations

from functools import partial

from django.db import transaction

from kumosubmit.db import run_db, storable
from kumosubmit.signals import message_stored
from kumosubmit.spool.base import BaseSpool, SpooledMessage
from kumosubmit.spool.models import Message


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
        with transaction.atomic():
            Message.objects.create(
                queue_id=message.queue_id,
                mail_from=_column(storable(message.mail_from), "mail_from"),
                rcpt_tos=storable(message.rcpt_tos),
                size=len(message.content),
                content=message.content,
                authz_id=_column(meta.get("authz_id"), "authz_id"),
                authn_id=_column(meta.get("authn_id"), "authn_id"),
                conn_id=_column(meta.get("conn_id"), "conn_id"),
                meta=meta,
            )
            # After the commit, never before: an observer (the relay in hand-off mode)
            # must find the row. send_robust: a receiver's error cannot cost the 250.
            transaction.on_commit(
                partial(message_stored.send_robust, DatabaseSpool, queue_id=message.queue_id)
            )
