"""The relay queue: claiming due messages, leases, and every state transition.

Each function is one unit of ORM work, run off the event loop by the worker
(``kumosubmit.db.run_db``) or called directly by the admin and commands.

Claiming. A message is due when ``next_attempt_at <= now`` (one partial
index). A worker claims a batch in one short transaction: it selects the due
rows oldest first and marks them ``delivering``, with itself as
``lease_owner`` and ``next_attempt_at`` moved to the end of its lease. On
PostgreSQL (and any database with ``SKIP LOCKED``) the select is ``FOR UPDATE
SKIP LOCKED``, so workers on any number of hosts take disjoint batches
without waiting for each other. Elsewhere (SQLite) the update re-checks that
each row is still due, so a row can never be claimed twice, but concurrent
workers would queue on the database's single writer lock: run one.

Leases. Nothing is locked while a message is being delivered. The worker
renews the leases of what it holds every third of the lease; a worker that
dies stops renewing, and once its leases run out its messages are due again
and another worker takes them: at least once, never lost. A worker writes an
outcome only while it still owns the lease, so a stale worker cannot undo a
later one's work.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import BinaryField, Case, Count, F, QuerySet, Value, When
from django.utils import timezone

from kumosubmit.conf import app_settings
from kumosubmit.relay.client import Attempt, Verdict
from kumosubmit.relay.config import RelayConfig
from kumosubmit.relay.dsn import FailedRecipient, build_dsn
from kumosubmit.spool.models import Message, MessageState

log = logging.getLogger("kumosubmit.relay")

#: States a due message can be claimed from (DELIVERING: its lease ran out).
CLAIMABLE = (MessageState.QUEUED, MessageState.DEFERRED, MessageState.DELIVERING)
#: Messages up to this size come with the claim; larger ones are read when sent.
INLINE_CONTENT_BYTES = 256 * 1024
#: The status of recipients given up on because the message grew older than MAX_AGE.
EXPIRED_STATUS = "4.4.7"  # RFC 3463: delivery time expired


@dataclass
class Claimed:
    """A message a worker holds the lease on: what it needs to attempt delivery."""

    pk: int
    queue_id: str
    mail_from: str
    rcpt_tos: list[str]
    #: (index in rcpt_tos, address) of the recipients not yet delivered or failed.
    pending: list[tuple[int, str]]
    attempts: int
    received_at: datetime
    #: The recipients' outcomes so far (Message.recipient_outcomes).
    outcomes: list[Any] = field(default_factory=list)
    content: bytes | None = None  # None: larger than INLINE_CONTENT_BYTES, read on use
    reclaimed_from: str = ""  # the worker whose lease ran out, if any


@dataclass
class Recorded:
    """What one attempt did to a message, for the worker's log and counters."""

    queue_id: str
    state: str
    detail: str
    next_attempt_at: datetime | None = None
    dsn_queue_id: str = ""


def pending_recipients(rcpt_tos: list[str], outcomes: list[Any]) -> list[tuple[int, str]]:
    """The recipients still to try: those with no final outcome yet."""
    final = (Verdict.DELIVERED, Verdict.FAILED)
    return [
        (index, address)
        for index, address in enumerate(rcpt_tos)
        if not (index < len(outcomes) and (outcomes[index] or {}).get("state") in final)
    ]


def due(now: datetime) -> QuerySet[Message]:
    """Messages a worker may claim at ``now``, oldest first.

    Only ``next_attempt_at`` is tested, so that the database walks the claim
    index in order and stops at the limit: a filter on ``state`` as well makes
    SQLite pick the state index and sort every queued row. Every transition
    here keeps ``next_attempt_at`` NULL outside CLAIMABLE states; ``claim``
    re-checks the state of what it found all the same.
    """
    return Message.objects.filter(next_attempt_at__lte=now).order_by("next_attempt_at", "pk")


_CLAIM_FIELDS = (
    "pk",
    "queue_id",
    "mail_from",
    "rcpt_tos",
    "recipient_outcomes",
    "attempts",
    "received_at",
)


def claim(
    owner: str,
    limit: int,
    lease: float,
    *,
    cutoff: datetime | None = None,
    new_only: bool = False,
) -> list[Claimed]:
    """Take up to ``limit`` due messages for ``owner`` for ``lease`` seconds.

    ``cutoff`` claims only what was due by then (``runrelay --once``), and
    ``new_only`` only messages never attempted (mail that arrived meanwhile).
    """
    now = timezone.now()
    rows = due(min(now, cutoff) if cutoff else now)
    if new_only:
        rows = rows.filter(attempts=0)  # not state=QUEUED, for the index (see due())
    small = Case(
        When(size__lte=INLINE_CONTENT_BYTES, then=F("content")),
        default=Value(None),
        output_field=BinaryField(),
    )
    rows = rows.annotate(inline_content=small)
    fields = (*_CLAIM_FIELDS, "state", "lease_owner", "inline_content")
    until = now + timedelta(seconds=lease)
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            found = list(rows.select_for_update(skip_locked=True).values_list(*fields)[:limit])
            found = _claimable(found)
            ids = [row[0] for row in found]
            Message.objects.filter(pk__in=ids).update(
                state=MessageState.DELIVERING, lease_owner=owner, next_attempt_at=until
            )
        else:
            found = _claimable(list(rows.values_list(*fields)[:limit]))
            ids = [row[0] for row in found]
            # Claim only rows still due: a concurrent worker may have taken some.
            Message.objects.filter(pk__in=ids, next_attempt_at__lte=now).update(
                state=MessageState.DELIVERING, lease_owner=owner, next_attempt_at=until
            )
            mine = set(
                Message.objects.filter(
                    pk__in=ids, lease_owner=owner, next_attempt_at=until
                ).values_list("pk", flat=True)
            )
            found = [row for row in found if row[0] in mine]
    claimed = []
    for row in found:
        pk, queue_id, mail_from, rcpt_tos, outcomes, attempts, received_at = row[:7]
        state, previous, inline = row[7:]
        claimed.append(
            Claimed(
                pk=pk,
                queue_id=queue_id,
                mail_from=mail_from,
                rcpt_tos=list(rcpt_tos),
                pending=pending_recipients(rcpt_tos, outcomes or []),
                attempts=attempts,
                received_at=received_at,
                outcomes=list(outcomes or []),
                content=None if inline is None else bytes(inline),
                reclaimed_from=previous if state == MessageState.DELIVERING else "",
            )
        )
    return claimed


def _claimable(found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows in a CLAIMABLE state; any other had a stray next_attempt_at, now cleared."""
    stray = [row[0] for row in found if row[7] not in CLAIMABLE]
    if stray:
        Message.objects.filter(pk__in=stray).exclude(state__in=CLAIMABLE).update(
            next_attempt_at=None
        )
    return [row for row in found if row[7] in CLAIMABLE]


def content_of(pk: int) -> bytes | None:
    """A message's content (None if the message was deleted meanwhile)."""
    content = Message.objects.filter(pk=pk).values_list("content", flat=True).first()
    return None if content is None else bytes(content)


def renew(owner: str, lease: float) -> int:
    """Extend the leases ``owner`` holds by ``lease`` seconds from now."""
    return Message.objects.filter(state=MessageState.DELIVERING, lease_owner=owner).update(
        next_attempt_at=timezone.now() + timedelta(seconds=lease)
    )


def release(owner: str, pks: list[int] | None = None) -> int:
    """Give back messages ``owner`` holds (all, or ``pks``) as due now: a clean stop."""
    rows = Message.objects.filter(state=MessageState.DELIVERING, lease_owner=owner)
    if pks is not None:
        rows = rows.filter(pk__in=pks)
    return rows.update(
        state=Case(
            When(attempts=0, then=Value(MessageState.QUEUED)),
            default=Value(MessageState.DEFERRED),
        ),
        lease_owner="",
        next_attempt_at=timezone.now(),
    )


def retry_delay(attempts: int, config: RelayConfig) -> float:
    """Seconds until the next try after ``attempts`` failed ones: doubling, capped."""
    return min(config.retry_delay * 2 ** max(attempts - 1, 0), config.max_retry_delay)


def record(
    results: list[tuple[Claimed, Attempt]],
    owner: str,
    config: RelayConfig,
    *,
    claim_limit: int = 0,
    cutoff: datetime | None = None,
    new_only: bool = False,
) -> tuple[list[Recorded], list[Claimed]]:
    """Write the outcomes of attempts, with any DSNs they cause, in one transaction.

    A row is written only while ``owner`` still holds its lease: the claim
    brought everything the new state depends on, and while the lease is ours
    nothing else changes the row (the admin's actions skip messages in
    delivery). With ``claim_limit``, the same transaction claims up to that
    many due messages (see ``claim``): one commit instead of two.
    """
    now = timezone.now()
    done = []
    # Messages whose rows change alike (typically: delivered to every recipient with
    # the same reply) are written with one UPDATE.
    groups: dict[str, list[tuple[Claimed, Attempt, dict[str, Any], list[int]]]] = {}
    for claimed, attempt in results:
        changes, failed = _apply(claimed, attempt, config, now)
        key = json.dumps(changes, sort_keys=True, default=str) if not failed else claimed.queue_id
        groups.setdefault(key, []).append((claimed, attempt, changes, failed))
    with transaction.atomic():
        for group in groups.values():
            changes = group[0][2]
            ours = Message.objects.filter(state=MessageState.DELIVERING, lease_owner=owner)
            if len(group) == 1:
                written = (
                    {group[0][0].pk} if ours.filter(pk=group[0][0].pk).update(**changes) else set()
                )
            else:
                pks = [claimed.pk for claimed, *_ in group]
                written = set(
                    ours.select_for_update().filter(pk__in=pks).values_list("pk", flat=True)
                )
                Message.objects.filter(pk__in=written).update(**changes)
            for claimed, attempt, changes, failed in group:
                if claimed.pk not in written:
                    # Deleted, or our lease ran out and another worker has it now.
                    log.warning("relay %s: no longer ours; outcome not recorded", claimed.queue_id)
                    continue
                dsn = ""
                if failed and claimed.mail_from:  # the null sender (a bounce) never gets one
                    outcomes = changes["recipient_outcomes"]
                    failures = [(index, outcomes[index]) for index in failed]
                    dsn = _queue_dsn(claimed, failures, attempt.remote, now)
                replies = {o.reply for o in attempt.outcomes.values()}
                done.append(
                    Recorded(
                        queue_id=claimed.queue_id,
                        state=changes["state"],
                        detail=changes["last_error"] or "; ".join(sorted(replies)),
                        next_attempt_at=changes["next_attempt_at"],
                        dsn_queue_id=dsn,
                    )
                )
        claimed = (
            claim(owner, claim_limit, config.lease, cutoff=cutoff, new_only=new_only)
            if claim_limit
            else []
        )
    return done, claimed


def _apply(
    claimed: Claimed, attempt: Attempt, config: RelayConfig, now: datetime
) -> tuple[dict[str, Any], list[int]]:
    """The row's new values after ``attempt``, and the recipients it failed (for a DSN)."""
    outcomes: list[Any] = list(claimed.outcomes)
    outcomes += [{}] * (len(claimed.rcpt_tos) - len(outcomes))
    failed = []
    for index, outcome in sorted(attempt.outcomes.items()):
        outcomes[index] = {
            "state": str(outcome.verdict),
            "status": outcome.status,
            "reply": outcome.reply,
            "at": now.isoformat(),
        }
        if outcome.verdict == Verdict.FAILED:
            failed.append(index)
    attempts = claimed.attempts + 1
    errors = [o.reply for o in attempt.outcomes.values() if o.verdict != Verdict.DELIVERED]
    last_error = errors[0] if errors else ""

    pending = pending_recipients(claimed.rcpt_tos, outcomes)
    deadline = claimed.received_at + timedelta(seconds=config.max_age)
    if pending and now >= deadline:
        for index, _ in pending:
            last = outcomes[index].get("reply") or "no attempt was made"
            outcomes[index] = {
                **outcomes[index],
                "state": str(Verdict.FAILED),
                "status": EXPIRED_STATUS,
                "reply": f"{last} (gave up: older than MAX_AGE, {config.max_age:g} s)",
                "at": now.isoformat(),
            }
            failed.append(index)
        last_error = f"expired after {attempts} attempts: {last_error}"
        pending = []

    changes: dict[str, Any] = {
        "attempts": attempts,
        "last_attempt_at": now,
        "last_error": last_error,
        "recipient_outcomes": outcomes,
        "lease_owner": "",
    }
    if pending:
        wait = timedelta(seconds=retry_delay(attempts, config))
        changes.update(state=MessageState.DEFERRED, next_attempt_at=min(now + wait, deadline))
    else:
        delivered = any(o.get("state") == Verdict.DELIVERED for o in outcomes)
        changes.update(
            state=MessageState.DELIVERED if delivered else MessageState.FAILED,
            next_attempt_at=None,
            delivered_at=now if delivered else None,
        )
    return changes, failed


def _queue_dsn(
    message: Claimed, failed: list[tuple[int, dict[str, Any]]], remote: str, now: datetime
) -> str:
    """Store the failure DSN for ``message`` as a new queued message; return its queue id."""
    original = message.content
    if original is None:
        original = Message.objects.filter(pk=message.pk).values_list("content", flat=True).get()
    reporting_mta = app_settings.HOSTNAME or socket.getfqdn()
    content = build_dsn(
        original=bytes(original),
        sender=message.mail_from,
        queue_id=message.queue_id,
        arrival=message.received_at,
        failed=[
            FailedRecipient(
                address=message.rcpt_tos[index],
                status=outcome.get("status") or "5.0.0",
                reply=outcome.get("reply", ""),
                at=now,
            )
            for index, outcome in failed
        ],
        reporting_mta=reporting_mta,
        remote_mta=remote,
        now=now,
    )
    dsn = Message.objects.create(
        queue_id=uuid.uuid4().hex,
        mail_from="",
        rcpt_tos=[message.mail_from],
        size=len(content),
        content=content,
        authz_id="",
        authn_id="",
        conn_id="",
        meta={
            "dsn": {"for": message.queue_id, "recipients": [message.rcpt_tos[i] for i, _ in failed]}
        },
    )
    return dsn.queue_id


# -- what the admin and commands do -------------------------------------------------


def counts_by_state() -> dict[str, int]:
    """How many messages are in each state (every state listed, 0 if none)."""
    counts = dict.fromkeys(MessageState.values, 0)
    for state, count in Message.objects.values_list("state").annotate(n=Count("pk")).order_by():
        counts[state] = count
    return counts


def retry_now(messages: QuerySet[Message]) -> int:
    """Make messages due now; failed recipients are tried again. Not delivered or in delivery."""
    now = timezone.now()
    changed = 0
    with transaction.atomic():
        rows = messages.select_for_update().filter(
            state__in=[
                MessageState.QUEUED,
                MessageState.DEFERRED,
                MessageState.HELD,
                MessageState.FAILED,
            ]
        )
        for message in rows.defer("content"):
            outcomes = [
                {**o, "state": str(Verdict.DEFERRED)} if o.get("state") == Verdict.FAILED else o
                for o in (message.recipient_outcomes or [])
            ]
            message.recipient_outcomes = outcomes
            message.state = MessageState.DEFERRED if message.attempts else MessageState.QUEUED
            message.next_attempt_at = now
            message.lease_owner = ""
            message.save(
                update_fields=["recipient_outcomes", "state", "next_attempt_at", "lease_owner"]
            )
            changed += 1
    return changed


def hold(messages: QuerySet[Message]) -> int:
    """Keep queued and deferred messages from being delivered until released."""
    return messages.filter(state__in=[MessageState.QUEUED, MessageState.DEFERRED]).update(
        state=MessageState.HELD, next_attempt_at=None
    )


def release_held(messages: QuerySet[Message]) -> int:
    """Let held messages go: due now, as queued (never tried) or deferred."""
    return messages.filter(state=MessageState.HELD).update(
        state=Case(
            When(attempts=0, then=Value(MessageState.QUEUED)),
            default=Value(MessageState.DEFERRED),
        ),
        next_attempt_at=timezone.now(),
    )
