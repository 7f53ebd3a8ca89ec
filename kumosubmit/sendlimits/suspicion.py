"""Suspending a login that sends far above its usual rate (``SUSPEND_FACTOR``; off by default).

Each stored message of a login updates two exponentially decaying counts
(:class:`~kumosubmit.sendlimits.models.SendRate`): ``recent`` with a time constant of
an hour, ``usual`` with one of a week. In a steady state ``recent / 3600`` and
``usual / 604800`` are both the login's rate per second. When the recent rate
exceeds ``SUSPEND_FACTOR`` times the usual one, or times ``SUSPEND_MIN_RATE`` if
that is higher (so a new login, with no history, is held to the floor), the login is
suspended: AUTH still works, so its owner can still be told apart from a
stranger, but MAIL FROM gets ``451 4.7.1`` until an admin lifts the suspension
(the admin's "Lift the suspension" action, which also clears the counts). The owner
and the admins get a notice.
"""

from __future__ import annotations

import logging
import math

from django.db import transaction
from django.utils import timezone

from kumosubmit.conf import app_settings
from kumosubmit.credentials.models import SmtpLogin
from kumosubmit.db import run_db, sqlite_turn
from kumosubmit.meta import ConnectionMeta
from kumosubmit.sendlimits import notice
from kumosubmit.sendlimits.backends import now_us
from kumosubmit.sendlimits.models import SendRate
from kumosubmit.sendlimits.rules import Rule
from kumosubmit.sendlimits.sessions import SessionLimits

log = logging.getLogger("kumosubmit.sendlimits")

RECENT = 3600.0  # seconds: the time constant of the recent rate
USUAL = 7 * 86400.0  # and of the usual one
#: conn_meta.cache key: this connection's login was suspended by one of its messages.
SUSPENDED_NOW = "send_limits_suspended"


def rates(row: SendRate, now: int) -> tuple[float, float]:
    """The recent and usual rates at ``now``, per hour."""
    elapsed = max(0.0, (now - row.updated) / 1e6)
    recent = row.recent * math.exp(-elapsed / RECENT)
    usual = row.usual * math.exp(-elapsed / USUAL)
    return recent / RECENT * 3600, usual / USUAL * 3600


def record(login_id: int, now: int) -> str | None:
    """Count one message; suspend the login if it is now over; the reason if it was."""
    factor = app_settings.SUSPEND_FACTOR
    floor = Rule.parse(app_settings.SUSPEND_MIN_RATE).rate() * 3600  # per hour
    with sqlite_turn(), transaction.atomic():
        row = SendRate.objects.select_for_update().filter(login_id=login_id).first()
        if row is None:
            row = SendRate(login_id=login_id, updated=now)
        elapsed = max(0.0, (now - row.updated) / 1e6)
        row.recent = row.recent * math.exp(-elapsed / RECENT) + 1
        row.usual = row.usual * math.exp(-elapsed / USUAL) + 1
        row.updated = now
        row.save()
        recent, usual = rates(row, now)
        if recent <= factor * max(usual, floor):
            return None
        reason = (
            f"{recent:.0f} messages an hour lately, over {factor:g} times its usual "
            f"{max(usual, floor):.1f} an hour"
        )
        suspended = SmtpLogin.objects.filter(pk=login_id, suspended_at__isnull=True).update(
            suspended_at=timezone.now(), suspended_reason=reason[:255]
        )
        return reason if suspended else None


def lift(login: SmtpLogin) -> bool:
    """End a suspension and forget the counts that led to it; False if none was in force."""
    with transaction.atomic():
        lifted = SmtpLogin.objects.filter(pk=login.pk, suspended_at__isnull=False).update(
            suspended_at=None, suspended_reason=""
        )
        SendRate.objects.filter(login_id=login.pk).delete()
    login.suspended_at, login.suspended_reason = None, ""
    return bool(lifted)


async def observe(limits: SessionLimits, conn_meta: ConnectionMeta) -> None:
    """After a stored message: count it; a suspension stops this connection too."""
    try:
        reason = await run_db(record, limits.login_id, now_us())
    except Exception:
        log.exception("conn %s: could not count the sending rate", conn_meta["conn_id"])
        return
    if reason is None:
        return
    conn_meta.cache[SUSPENDED_NOW] = True
    log.warning("login %s suspended: %s", limits.username, reason)
    if app_settings.SEND_LIMITS_NOTICE is None:
        return
    message = notice.compose(
        f"Login suspended: {limits.username}",
        [
            f"The login {limits.username} was suspended: {reason}.",
            "It can still sign in, but every message is refused with 451 4.7.1 until an",
            "administrator lifts the suspension (SMTP logins, action “Lift the suspension”):",
            f"  {notice.page_url('admin:kumosubmit_smtplogin_change', limits.login_id)}",
            "If the messages were not sent by its owner, change its password and revoke",
            "its app passwords first:",
            f"  {notice.page_url('credentials:login', limits.login_id)}",
        ],
        limits.owner_email,
        "suspension",
    )
    if message is not None:
        try:
            await notice.deliver(message)
        except Exception:
            log.exception("could not send the suspension notice of %s", limits.username)
