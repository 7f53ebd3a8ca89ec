"""Sending limits per login and app password: ``451 4.7.1`` at MAIL FROM or RCPT TO.

Three built-in handlers; only messages that got their ``250`` use up the allowance
(docs/limits.md):

- ``smtp_server_auth_plain`` (a wrapper): once the login is in, reads its limits and
  reserves its first message ahead (:func:`reserve_first`), so that the first message
  waits for neither (else the first MAIL FROM does both).
- ``smtp_server_mail_from`` (after the sender policy): settles the connection's
  previous transaction, then refuses a suspended login, then reserves one message and
  one recipient against every rule of the login (and of its app password), or
  refuses with the time to retry. Plain, as the sender policy's: in the common case
  (the last transaction stored in full, the lease covers the message) it waits for
  nothing and costs no turn of the event loop.
- ``smtp_server_rcpt_to``: the first recipient is reserved already; each further one
  reserves one more.

Settling a transaction (at the next MAIL FROM, or when the connection ends): if the
connection stored a message since the reservation (``conn_meta["messages_accepted"]``
moved on; the spool counts it after the commit, before the ``250``), the reservation
stands, less the recipient units no accepted recipient used; otherwise (RSET, a refused
DATA, a refused sender or recipient after the reservation, a spool failure, the
connection lost) it is given back. So at most one transaction's reservation is
pending per connection, and settling costs nothing when there is nothing to give back.
What a connection reserves, it may reserve ahead of its next messages, and what it gives
back it may keep for them (kumosubmit/sendlimits/leases.py); what it holds goes back when
it ends. The first refusal of a rule in its window sends the owner and the admins a notice
(kumosubmit/sendlimits/notice.py).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kumosubmit import metrics
from kumosubmit.conf import app_settings
from kumosubmit.db import run_db
from kumosubmit.hooks import EnvelopeAddress, reject
from kumosubmit.hooks.dryrun import is_dry_run
from kumosubmit.meta import ConnectionMeta
from kumosubmit.sendlimits import notice, sessions, suspicion
from kumosubmit.sendlimits.backends import Bucket, Refusal, get_backend
from kumosubmit.sendlimits.leases import Lease, lease_of
from kumosubmit.sendlimits.rules import MESSAGES, RECIPIENTS

log = logging.getLogger("kumosubmit.sendlimits")

#: conn_meta.cache keys.
LIMITS = "send_limits"
READ_AT_AUTH = "send_limits_read_at_auth"
PENDING = "send_limits_pending"
LEASE = "send_limits_lease"
CLOSE_HOOKED = "send_limits_on_close"

SUSPENDED = (
    451,
    "4.7.1 This login is suspended for sending far above its usual rate; "
    "its owner and the administrators have been told",
)


@dataclass
class Pending:
    """What the current transaction has reserved and not yet settled."""

    items: list[tuple[Bucket, int]]
    #: conn_meta["messages_accepted"] when it was made: more later means it was stored.
    messages_before: int
    #: The transaction it was made for (its ``recipients``: those accepted).
    transaction: Any
    recipient_buckets: tuple[Bucket, ...] = ()
    recipients_reserved: int = 0
    limits: sessions.SessionLimits | None = field(default=None, repr=False)


def in_words(seconds: float) -> str:
    """``"2 seconds"``, ``"14 minutes"``, ``"3 hours"``, rounded up."""
    seconds = max(1, math.ceil(seconds))
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size:
            count = math.ceil(seconds / size)
            return f"{count} {unit}s"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def refusal_text(refusal: Refusal, limits: sessions.SessionLimits) -> str:
    bucket = refusal.bucket
    whose = "this app password" if bucket.app_password_id is not None else "this login"
    at = datetime.now(UTC) + timedelta(seconds=math.ceil(refusal.retry_after))
    return (
        f"4.7.1 Sending limit of {whose} reached ({bucket.rule.describe(bucket.kind)}); "
        f"try again in {in_words(refusal.retry_after)} (after {at:%H:%M:%S} UTC)"
    )


async def session_limits(conn_meta: ConnectionMeta) -> sessions.SessionLimits | None:
    """The session's limits, read at AUTH (or at the first MAIL FROM) and kept for the
    connection."""
    if LIMITS not in conn_meta.cache:
        authn = conn_meta.get("authn_id")
        whose = (authn, sessions.app_password_used(conn_meta))
        read = conn_meta.cache.pop(READ_AT_AUTH, None)
        if read is not None and read[0] == whose:  # that AUTH is the one that stood
            conn_meta.cache[LIMITS] = read[1]
        else:
            conn_meta.cache[LIMITS] = await run_db(sessions.load, *whose) if authn else None
    limits: sessions.SessionLimits | None = conn_meta.cache[LIMITS]
    return limits


async def settle(conn_meta: ConnectionMeta) -> None:
    """Settle the reservation of the connection's last transaction (see the module's
    docstring): keep what a stored message used, give back the rest (to the connection's
    lease first, up to it)."""
    pending: Pending | None = conn_meta.cache.pop(PENDING, None)
    if pending is None:
        return
    stored = conn_meta["messages_accepted"] > pending.messages_before
    if stored:
        spare = pending.recipients_reserved - len(pending.transaction.recipients)
        back = [(bucket, spare) for bucket in pending.recipient_buckets] if spare > 0 else []
    else:
        back = pending.items
    if back:
        await _release(conn_meta, held_by(conn_meta).give_back(back))
    if stored and app_settings.SUSPEND_FACTOR and pending.limits is not None:
        await suspicion.observe(pending.limits, conn_meta)


def held_by(conn_meta: ConnectionMeta) -> Lease:
    """The units the connection holds ahead (kumosubmit/sendlimits/leases.py)."""
    lease: Lease | None = conn_meta.cache.get(LEASE)
    if lease is None:
        lease = conn_meta.cache[LEASE] = Lease()
    return lease


async def _release(conn_meta: ConnectionMeta, items: list[tuple[Bucket, int]]) -> None:
    if not items:
        return
    try:
        await get_backend().arelease(items)
    except Exception:  # stricter than it should be for a while; never a reason to fail
        log.exception("conn %s: could not give back a reservation", conn_meta["conn_id"])


async def _closed(conn_meta: ConnectionMeta) -> None:
    """The connection ended: settle its last transaction, and return what it holds."""
    await settle(conn_meta)
    await _release(conn_meta, held_by(conn_meta).surrender())


def _at_close(conn_meta: ConnectionMeta) -> Coroutine[Any, Any, None] | None:
    """The connection's end: what it has to give back, as work the server runs."""
    lease: Lease | None = conn_meta.cache.get(LEASE)
    if PENDING not in conn_meta.cache and (lease is None or not lease.units):
        return None
    return _closed(conn_meta)


async def _refused(
    refusal: Refusal, limits: sessions.SessionLimits, conn_meta: ConnectionMeta
) -> None:
    """Count the refusal; the first in the rule's window sends the notice."""
    bucket = refusal.bucket
    metrics.send_limited("messages" if bucket.kind == MESSAGES else "recipients")
    log.info(
        "conn %s: %s over %s %s; retry in %.0f s",
        conn_meta["conn_id"],
        limits.username,
        bucket.key,
        bucket.rule.describe(bucket.kind),
        refusal.retry_after,
    )
    if app_settings.SEND_LIMITS_NOTICE is None:
        return
    try:
        if await get_backend().aclaim_notice(bucket):
            message = limit_notice(refusal, limits)
            if message is not None:
                await notice.deliver(message)
    except Exception:  # the 451 stands; the notice is logged as missing
        log.exception("conn %s: could not send the sending-limit notice", conn_meta["conn_id"])


def limit_notice(refusal: Refusal, limits: sessions.SessionLimits) -> notice.Notice | None:
    bucket = refusal.bucket
    rule = bucket.rule.describe(bucket.kind)
    lines = [
        f"{limits.credential(bucket).capitalize()} has reached its sending limit of {rule}:",
        f"{bucket.rule.count} of {bucket.rule.count} used. Further "
        f"{'messages' if bucket.kind == MESSAGES else 'recipients'} are refused with "
        f"451 4.7.1 (clients retry later) for about {in_words(refusal.retry_after)}.",
        "",
        "If this is expected, an administrator can raise the limit:",
        f"  {notice.page_url('admin:kumosubmit_smtplogin_change', limits.login_id)}",
        "If it is not (a stolen password sends this way), change the password "
        + ("or revoke the app password" if bucket.app_password_id is not None else "")
        + ":",
        f"  {notice.page_url('credentials:login', limits.login_id)}",
        "",
        "This notice is sent once per window of the limit.",
    ]
    return notice.compose(
        f"Sending limit reached: {limits.username}, {rule}",
        lines,
        limits.owner_email,
        "send_limit",
    )


# -- the handlers ------------------------------------------------------------------------


async def auth_plain(
    authz: str, authc: str, password: str, conn_meta: ConnectionMeta
) -> AsyncGenerator[None, Any]:
    """The wrapper of ``smtp_server_auth_plain``: once the login is in, read its limits and
    reserve its first message ahead (:func:`reserve_first`)."""
    verdict = yield
    if verdict is not True:
        return
    whose = (authc, sessions.app_password_used(conn_meta))
    try:
        limits = await run_db(sessions.load, *whose)
        conn_meta.cache[READ_AT_AUTH] = (whose, limits)
        await reserve_first(limits, conn_meta)
    except Exception:  # read again at MAIL FROM, where a failure has its own reply
        log.exception("conn %s: could not read the sending limits at AUTH", conn_meta["conn_id"])


async def reserve_first(limits: sessions.SessionLimits | None, conn_meta: ConnectionMeta) -> None:
    """Reserve the session's first message (and its first recipient) with its AUTH, which
    waits for argon2 anyway: on the message's way, that trip would wait behind the other
    sessions' work on the database thread. Only where every rule has a lease: a rule
    without one stays exact to the message, holding nothing for a message that may never
    come. Refused (the limit is near), nothing is held, and MAIL FROM asks as usual."""
    if limits is None or limits.suspended or is_dry_run(conn_meta):
        return
    items = _message_items(limits)
    if not items or any(lease_of(bucket) <= 1 for bucket, _ in items):
        return
    if await get_backend().areserve(items) is None:
        held_by(conn_meta).hold(items)
        _give_back_at_close(conn_meta)


def _message_items(limits: sessions.SessionLimits) -> list[tuple[Bucket, int]]:
    """What a transaction reserves at MAIL FROM: one message and one recipient."""
    return [(bucket, 1) for bucket in (*limits.of(MESSAGES), *limits.of(RECIPIENTS))]


def _give_back_at_close(conn_meta: ConnectionMeta) -> None:
    if not conn_meta.cache.get(CLOSE_HOOKED):
        conn_meta.cache[CLOSE_HOOKED] = True
        conn_meta.on_close.append(functools.partial(_at_close, conn_meta))


def _stored_in_full(pending: Pending, conn_meta: ConnectionMeta) -> bool:
    """Whether the transaction was stored, with every recipient it reserved a unit for:
    settling it gives nothing back."""
    return (
        conn_meta["messages_accepted"] > pending.messages_before
        and len(pending.transaction.recipients) >= pending.recipients_reserved
    )


def mail_from(sender: EnvelopeAddress, conn_meta: ConnectionMeta) -> Awaitable[None] | None:
    """Plain, as the sender policy's: a message that the connection's lease covers, after
    one that was stored with every recipient it reserved for, is reserved here with no
    trip through the event loop (registry.call); anything else is :func:`_mail_from`."""
    cache = conn_meta.cache
    pending: Pending | None = cache.get(PENDING)
    if pending is None or not _stored_in_full(pending, conn_meta):
        return _mail_from(sender, conn_meta)
    limits = pending.limits
    if (
        limits is None
        or limits.suspended
        or cache.get(suspicion.SUSPENDED_NOW)
        or app_settings.SUSPEND_FACTOR
    ):
        return _mail_from(sender, conn_meta)
    items = _message_items(limits)
    if not held_by(conn_meta).take(items):
        return _mail_from(sender, conn_meta)
    # The previous transaction was stored and used all it reserved: settled as it is.
    recipients = limits.of(RECIPIENTS)
    cache[PENDING] = Pending(
        items=items,
        messages_before=conn_meta["messages_accepted"],
        transaction=conn_meta.transaction,
        recipient_buckets=recipients,
        recipients_reserved=1 if recipients else 0,
        limits=limits,
    )
    return None


async def _mail_from(sender: EnvelopeAddress, conn_meta: ConnectionMeta) -> None:
    await settle(conn_meta)  # the previous transaction, stored or not
    limits = await session_limits(conn_meta)
    if limits is None:
        return
    if limits.suspended or conn_meta.cache.get(suspicion.SUSPENDED_NOW):
        metrics.send_limited("suspended")
        reject(*SUSPENDED)
    recipients = limits.of(RECIPIENTS)
    items = _message_items(limits)
    if (not items and not app_settings.SUSPEND_FACTOR) or is_dry_run(conn_meta):
        return
    if items:
        refusal = await held_by(conn_meta).reserve(items, get_backend().areserve)
        if refusal is not None:
            await _refused(refusal, limits, conn_meta)
            reject(451, refusal_text(refusal, limits))
    conn_meta.cache[PENDING] = Pending(
        items=items,
        messages_before=conn_meta["messages_accepted"],
        transaction=conn_meta.transaction,
        recipient_buckets=recipients,
        recipients_reserved=1 if recipients else 0,
        limits=limits,
    )
    _give_back_at_close(conn_meta)


def rcpt_to(recipient: EnvelopeAddress, conn_meta: ConnectionMeta) -> Awaitable[None] | None:
    """Plain: a recipient the lease covers costs no trip through the event loop."""
    pending: Pending | None = conn_meta.cache.get(PENDING)
    if pending is None or not pending.recipient_buckets:
        return None
    if len(pending.transaction.recipients) < pending.recipients_reserved:
        return None  # the unit reserved at MAIL FROM (or for a recipient refused since)
    items = [(bucket, 1) for bucket in pending.recipient_buckets]
    if held_by(conn_meta).take(items):
        pending.items += items
        pending.recipients_reserved += 1
        return None
    return _reserve_recipient(pending, items, conn_meta)


async def _reserve_recipient(
    pending: Pending, items: list[tuple[Bucket, int]], conn_meta: ConnectionMeta
) -> None:
    refusal = await held_by(conn_meta).reserve(items, get_backend().areserve)
    if refusal is not None:
        assert pending.limits is not None
        await _refused(refusal, pending.limits, conn_meta)
        reject(451, refusal_text(refusal, pending.limits))
    pending.items += items
    pending.recipients_reserved += 1
