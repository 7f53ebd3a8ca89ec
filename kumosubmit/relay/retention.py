"""Retention: the content of delivered messages goes after RELAY["RETENTION"] seconds.

The row stays (envelope, size, meta, outcomes and when it was delivered), as
does the connection audit: what was sent, by whom and when remains on record,
without keeping everyone's mail for ever.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from kumosubmit.spool.models import Message, MessageState

#: Rows changed per UPDATE: short transactions, whatever the backlog.
BATCH = 1000


def expired_content(age: float, now: datetime | None = None) -> QuerySet[Message]:
    """Delivered messages older than ``age`` seconds that still have their content."""
    cutoff = (now or timezone.now()) - timedelta(seconds=age)
    return Message.objects.filter(
        state=MessageState.DELIVERED,
        delivered_at__lt=cutoff,
        content_removed_at__isnull=True,
    )


def remove_expired_content(
    age: float, now: datetime | None = None, *, limit: int | None = None
) -> int:
    """Empty the content of delivered messages older than ``age`` seconds; return how many.

    In batches of BATCH rows; with ``limit``, stop after that many.
    """
    now = now or timezone.now()
    removed = 0
    while limit is None or removed < limit:
        size = BATCH if limit is None else min(BATCH, limit - removed)
        ids = list(expired_content(age, now).values_list("pk", flat=True)[:size])
        if not ids:
            break
        removed += Message.objects.filter(pk__in=ids, content_removed_at__isnull=True).update(
            content=b"", content_removed_at=now
        )
    return removed
