"""How long the connection audit log is kept (``AUDIT_RETENTION``, ``pruneaudit``)."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.db import sqlite_turn

#: Rows deleted per transaction: on SQLite the listeners' writes wait while one runs.
BATCH = 5_000


def expired_records(age: float) -> QuerySet[ConnectionRecord]:
    """Audit rows of connections that started more than ``age`` seconds ago."""
    return ConnectionRecord.objects.filter(started_at__lt=timezone.now() - timedelta(seconds=age))


def delete_in_batches(queryset: QuerySet) -> int:
    """Delete ``queryset``'s rows a batch per short transaction; how many went.

    One DELETE of months of rows would hold SQLite's single writer (and so every
    listener's next message) for as long as it takes; batches taken in turn with
    the listeners (:func:`kumosubmit.db.sqlite_turn`) let their writes through
    in between.
    """
    deleted = 0
    while True:
        with sqlite_turn(), transaction.atomic():
            batch = list(queryset.values_list("pk", flat=True)[:BATCH])
            if not batch:
                return deleted
            queryset.model.objects.filter(pk__in=batch).delete()
        deleted += len(batch)
