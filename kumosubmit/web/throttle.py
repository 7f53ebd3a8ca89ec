"""Failed web sign-ins: delays that grow, then blocks, as for SMTP AUTH.

Every form that checks a site password (the self-service sign-in, the admin's,
and the password change) goes through :class:`~kumosubmit.web.backends.ThrottledModelBackend`,
which asks here first. The rules are those of
:mod:`kumosubmit.credentials.throttle`, with their own settings
(``KUMOSUBMIT["WEB_BRUTE_FORCE"]``) and their own counters in the same table
(kinds ``web_address``, ``web_login``, ``web_pair``), so the admin's list of
counters and blocks shows both:

- each failure from an address is answered after ``DELAY * 2**(n-1)`` seconds,
  at most ``MAX_DELAY``;
- an address with ``IP_BLOCK_AFTER`` failures is refused for ``BLOCK_DURATION``
  without its password being checked;
- a user with ``LOGIN_BLOCK_AFTER`` failures is refused, but only from the
  addresses that failed for them: the owner signs in from anywhere else;
- a success forgets its address's failures and the pair's, never the user's.

The counts live in the database, so every server process and host agrees; the
writes are the SMTP side's atomic ``UPDATE``s (``credentials.throttle._count``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from kumosubmit.conf import DEFAULTS, app_settings
from kumosubmit.credentials import throttle
from kumosubmit.credentials.models import AuthFailureCounter

log = logging.getLogger(__name__)

ADDRESS = AuthFailureCounter.Kind.WEB_ADDRESS.value
USER = AuthFailureCounter.Kind.WEB_LOGIN.value
PAIR = AuthFailureCounter.Kind.WEB_PAIR.value
KINDS = (ADDRESS, USER, PAIR)


def settings_dict() -> dict[str, Any]:
    """The effective settings: a project may override just one key."""
    return {**DEFAULTS["WEB_BRUTE_FORCE"], **(app_settings.WEB_BRUTE_FORCE or {})}


def policy() -> throttle.Policy:
    """The current web policy (validated by the system check kumosubmit.E070)."""
    values = settings_dict()
    return throttle.Policy(
        enabled=bool(values["ENABLED"]),
        window=timedelta(seconds=values["WINDOW"]),
        delay=float(values["DELAY"]),
        max_delay=float(values["MAX_DELAY"]),
        ip_block_after=values["IP_BLOCK_AFTER"],
        login_block_after=values["LOGIN_BLOCK_AFTER"],
        block_duration=timedelta(seconds=values["BLOCK_DURATION"]),
        ipv6_prefix=int(values["IPV6_PREFIX"]),
    )


@dataclass(frozen=True)
class Keys:
    """The counters one sign-in touches: the address, the user, and the two together."""

    address: str | None
    user: str

    @classmethod
    def of(cls, policy: throttle.Policy, address: str | None, username: str) -> Keys:
        return cls(
            throttle.address_key(address, policy.ipv6_prefix),
            username.casefold()[: throttle.MAX_LOGIN_LENGTH],
        )

    @property
    def pair(self) -> str | None:
        return f"{self.address} {self.user}" if self.address else None

    def items(self) -> list[tuple[str, str]]:
        """(kind, value) in the order rows are locked in."""
        if self.address is None or self.pair is None:
            return [(USER, self.user)]
        return [(ADDRESS, self.address), (USER, self.user), (PAIR, self.pair)]

    def rows(self) -> dict[tuple[str, str], AuthFailureCounter]:
        query = Q()
        for kind, value in self.items():
            query |= Q(kind=kind, value=value)
        return {(r.kind, r.value): r for r in AuthFailureCounter.objects.filter(query).order_by()}


def blocking(
    policy: throttle.Policy, keys: Keys, now: datetime | None = None
) -> throttle.Block | None:
    """The block this sign-in falls under, if any (one query, no password involved)."""
    if not policy.enabled:
        return None
    now = now or timezone.now()
    rows = keys.rows()
    address = rows.get((ADDRESS, keys.address or ""))
    if address is not None and address.is_blocked(now):
        assert address.blocked_until is not None
        return throttle.Block(ADDRESS, address.value, address.blocked_until)
    user = rows.get((USER, keys.user))
    if user is None or not user.is_blocked(now):
        return None
    assert user.blocked_until is not None
    pair = rows.get((PAIR, keys.pair or ""))
    failed_here = (
        pair is not None
        and pair.failures > 0
        and pair.last_failure_at is not None
        and pair.last_failure_at > now - policy.window
    )
    if failed_here or keys.address is None:
        return throttle.Block(USER, user.value, user.blocked_until)
    return None


def record_failure(policy: throttle.Policy, keys: Keys) -> float:
    """Count a refused password; the seconds to wait before answering it."""
    if not policy.enabled:
        return 0.0
    now = timezone.now()
    thresholds = {ADDRESS: policy.ip_block_after, USER: policy.login_block_after, PAIR: None}
    with transaction.atomic():
        for kind, value in keys.items():
            throttle._count(kind, value, thresholds[kind], policy, now)
        rows = keys.rows()
    started = now + policy.block_duration
    for row in rows.values():
        if row.blocked_until == started:
            log.warning(
                "blocked %s %s until %s after too many failed web sign-ins",
                row.kind,
                row.value,
                started.isoformat(),
            )
    address = rows.get((ADDRESS, keys.address or ""))
    return policy.delay_for(address.failures if address else 0)


def forget_failures(keys: Keys) -> None:
    """After a good password: forget the address's failures and the pair's, not the user's."""
    if keys.address is None:
        return
    counters = AuthFailureCounter.objects
    now = timezone.now()
    with transaction.atomic():
        counters.filter(kind=ADDRESS, value=keys.address).exclude(blocked_until__gt=now).delete()
        counters.filter(kind=PAIR, value=keys.pair).delete()


def stale_counters(now: datetime | None = None) -> QuerySet[AuthFailureCounter]:
    """Web counters that can go without changing any delay or block (``pruneaudit``)."""
    stale = throttle._stale(policy(), now or timezone.now())
    return AuthFailureCounter.objects.filter(stale, kind__in=KINDS)


def wait(seconds: float) -> None:
    """Hold the answer to a failure (this request's thread only)."""
    if seconds > 0:
        time.sleep(seconds)
