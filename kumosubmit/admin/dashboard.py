"""The operator's view: AUTH outcomes and accepted messages per hour, who fails most, and
the blocks in force, web and SMTP, on one admin page.

Everything comes from the audit table (``ConnectionRecord``) and the failure
counters with a few grouped queries on indexed columns: one for all the hours of
the last 7 days (the 24-hour charts are its last 24 buckets), one each for the
top failing addresses and logins of the last 24 hours, one for the blocks. The
hour of a row is computed by the database itself (:class:`HourKey`), not by a
Python function per row as Django's ``TruncHour`` is on SQLite. The figures for a
million audit rows are in docs/benchmarks.md (``bench/dashboard.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections, transaction
from django.db.models import Count, Field, Func, Max, QuerySet, Sum
from django.db.models.expressions import Expression
from django.http import HttpRequest
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy as _

from kumosubmit.admin.charts import Column, Series, bar_chart, legend
from kumosubmit.audit.models import AuthOutcome, ConnectionRecord
from kumosubmit.credentials.models import AuthFailureCounter

HOURS_SHORT = 24
HOURS_LONG = 7 * 24
TOP = 10
BLOCKS_SHOWN = 50

AUTH_SERIES = (
    Series(AuthOutcome.SUCCESS, str(_("success")), "#2e7d32"),
    Series(AuthOutcome.FAILURE, str(_("failure")), "#c62828"),
    Series(AuthOutcome.BLOCKED, str(_("blocked")), "#ef6c00"),
    Series(AuthOutcome.ERROR, str(_("error")), "#757575"),
)
MESSAGE_SERIES = (Series("messages", str(_("messages accepted")), "#1565c0"),)
FAILED = (AuthOutcome.FAILURE, AuthOutcome.BLOCKED)
WEB_KINDS = {
    AuthFailureCounter.Kind.WEB_ADDRESS,
    AuthFailureCounter.Kind.WEB_LOGIN,
    AuthFailureCounter.Kind.WEB_PAIR,
}


class HourKey(Func):
    """A datetime column's UTC hour, computed in SQL in the cheapest form each database has.

    SQLite keeps an aware datetime as UTC text (``2026-12-06 23:55:01.123``): its
    first 13 characters name the hour, with no parsing. PostgreSQL gives the hours
    since 1970 as a number (``to_char`` would cost twice the whole query).
    :func:`hour_number` reads either.
    """

    output_field = Field()

    def __init__(self, expression: Expression | str) -> None:
        super().__init__(expression)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="substr(%(expressions)s, 1, 13)")

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler,
            connection,
            template="floor(date_part('epoch', %(expressions)s) / 3600)::bigint",
        )


def hour_number(value: int | str) -> int:
    """Hours since 1970 (UTC) from what :class:`HourKey` gave."""
    if isinstance(value, str):
        hour = datetime.strptime(value, "%Y-%m-%d %H").replace(tzinfo=UTC)
        return int(hour.timestamp()) // 3600
    return int(value)


class NoIndex(Func):
    """A column that SQLite may not use an index of (its unary ``+``); as is elsewhere.

    To group by ``peer_address`` SQLite would walk the whole table in that column's
    index to skip a sort, and to find failures it would take the ``auth_outcome``
    index (failures of all time) when it has no statistics: both instead of the
    last day's entries of ``kumosubmit_audit_dashboard``.
    """

    def __init__(self, expression: Expression | str, output_field: Any) -> None:
        super().__init__(expression, output_field=output_field)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="+%(expressions)s")

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        extra.setdefault("template", "%(expressions)s")
        return super().as_sql(compiler, connection, **extra)


def hour_key(moment: datetime) -> int:
    return int(moment.timestamp()) // 3600


@dataclass
class Hour:
    start: datetime
    outcomes: dict[str, int]
    messages: int


def hourly_query(start: datetime, end: datetime) -> QuerySet[ConnectionRecord, dict[str, Any]]:
    """Connections and accepted messages by hour and AUTH outcome, in [start, end)."""
    return (
        ConnectionRecord.objects.filter(started_at__gte=start, started_at__lt=end)
        .annotate(hour=HourKey("started_at"))
        .values("hour", "auth_outcome")
        .annotate(connections=Count("*"), messages=Sum("messages_accepted"))
        .order_by()
    )


def hourly(now: datetime, hours: int = HOURS_LONG) -> list[Hour]:
    """Connections by AUTH outcome and accepted messages, per hour, oldest first (1 query)."""
    end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    buckets = {
        hour_key(start + timedelta(hours=n)): Hour(start + timedelta(hours=n), {}, 0)
        for n in range(hours)
    }
    rows = hourly_query(start, end)
    with transaction.atomic(using=rows.db):
        if connections[rows.db].vendor == "postgresql":
            # JIT compiling this one aggregate costs more than it saves (docs/benchmarks.md).
            with connections[rows.db].cursor() as cursor:
                cursor.execute("SET LOCAL jit = off")
        fetched = list(rows)
    for row in fetched:
        bucket = buckets.get(hour_number(row["hour"]))
        if bucket is None:
            continue
        bucket.outcomes[row["auth_outcome"]] = row["connections"]
        bucket.messages += row["messages"] or 0
    return list(buckets.values())


def _columns(hours: list[Hour], every: int, fmt: str) -> tuple[list[Column], list[Column]]:
    auth, messages = [], []
    for index, hour in enumerate(hours):
        local = timezone.localtime(hour.start)
        label = local.strftime(fmt) if index % every == 0 else ""
        title = local.strftime("%Y-%m-%d %H:00")
        auth.append(Column(label, title, hour.outcomes))
        messages.append(Column(label, title, {"messages": hour.messages}))
    return auth, messages


def top_failing_query(now: datetime, field: str) -> QuerySet[ConnectionRecord, dict[str, Any]]:
    """Failed or blocked AUTH connections of the last 24 h counted by ``field``, most first."""
    outcome = ConnectionRecord._meta.get_field("auth_outcome")
    rows = ConnectionRecord.objects.alias(outcome=NoIndex("auth_outcome", outcome)).filter(
        started_at__gte=now - timedelta(hours=HOURS_SHORT), outcome__in=FAILED
    )
    if field == "authc":
        rows = rows.exclude(authc="")
    output = ConnectionRecord._meta.get_field(field)
    return (
        rows.values(**{"value": NoIndex(field, output)})
        .annotate(connections=Count("*"), last=Max("started_at"))
        .order_by("-connections", "value")
    )


def top_failing(now: datetime, field: str, limit: int = TOP) -> list[dict[str, Any]]:
    """The values of ``field`` with the most failed or blocked AUTH connections in 24 h."""
    return list(top_failing_query(now, field)[:limit])


def current_blocks(now: datetime) -> tuple[list[dict[str, Any]], int]:
    """The blocks in force (web and SMTP), soonest to end last, and how many there are."""
    blocked = AuthFailureCounter.objects.filter(blocked_until__gt=now)
    rows = [
        {
            "side": "web" if counter.kind in WEB_KINDS else "SMTP",
            "kind": counter.get_kind_display(),
            "value": counter.value,
            "failures": counter.failures,
            "until": counter.blocked_until,
        }
        for counter in blocked.order_by("-blocked_until")[:BLOCKS_SHOWN]
    ]
    return rows, blocked.count() if len(rows) == BLOCKS_SHOWN else len(rows)


def context(request: HttpRequest, now: datetime | None = None) -> dict[str, Any]:
    """What the dashboard template shows."""
    now = now or timezone.now()
    week = hourly(now)
    day = week[-HOURS_SHORT:]
    day_auth, day_messages = _columns(day, 3, "%H:00")
    week_auth, week_messages = _columns(week, 24, "%a %d")
    blocks, block_count = current_blocks(now)

    def chart(columns: list[Column], series: tuple[Series, ...], title: str) -> SafeString:
        return mark_safe(bar_chart(columns, series, title=title))  # noqa: S308 (escaped inside)

    return {
        "now": now,
        "charts": [
            (_("AUTH outcomes, last 24 hours"), chart(day_auth, AUTH_SERIES, "AUTH 24 h")),
            (
                _("Accepted messages, last 24 hours"),
                chart(day_messages, MESSAGE_SERIES, "Mail 24 h"),
            ),
            (_("AUTH outcomes, last 7 days"), chart(week_auth, AUTH_SERIES, "AUTH 7 days")),
            (_("Accepted messages, last 7 days"), chart(week_messages, MESSAGE_SERIES, "Mail 7 d")),
        ],
        "auth_legend": mark_safe(legend(AUTH_SERIES)),  # noqa: S308
        "totals": {
            "auth": {s.label: sum(h.outcomes.get(s.key, 0) for h in day) for s in AUTH_SERIES},
            "messages": sum(h.messages for h in day),
        },
        "top_addresses": top_failing(now, "peer_address"),
        "top_logins": top_failing(now, "authc"),
        "blocks": blocks,
        "block_count": block_count,
    }
