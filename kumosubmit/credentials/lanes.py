"""The legitimate user first: which argon2 lane an AUTH takes, and password-spray detection.

The argon2 pool (:mod:`kumosubmit.credentials.hashing`) has two lanes. Which one an
attempt takes is decided before its password is looked at, from the login it names
(authc) and the client's address only:

- **priority**: the login authenticated from this network (a /24 for IPv4,
  ``IPV6_PREFIX`` for IPv6) within ``KNOWN_PAIR_TTL`` (:class:`KnownPair`, written
  on success, whatever credential succeeded: the login's password or one of its app
  passwords), and has not failed ``KNOWN_MAX_FAILURES`` times from there since. Its
  verification goes ahead of every other one and is never refused.
- **bounded**: everything else, whether the login exists or not, so the lane tells
  nothing about a login. At most ``QUEUE`` attempts per process wait in it; one more
  is answered ``454 4.7.0`` at once, with no argon2 work done, and so is one whose
  verification has not started after ``MAX_WAIT`` seconds (it never starts).

Spray detection: every failure in the bounded lane marks its client address for
its scope (the login, or ``unknown`` for a name that is no login) in the current
window of ``SPRAY_WINDOW`` seconds (:class:`SprayMark`, one row per distinct
address). When a scope's window reaches ``SPRAY_LOGIN_ADDRESSES`` (one login) or
``SPRAY_UNKNOWN_ADDRESSES`` (unknown names) distinct addresses, a
:class:`SprayEvent` starts (the admin lists it), or the ongoing one is seen again.
While an event was seen within ``SPRAY_HOLD`` seconds the bounded lane is tightened
on every process and host sharing the database: its queue is ``SPRAY_QUEUE`` long,
and each of its failures waits ``SPRAY_DELAY`` seconds before its ``535``. The
priority lane is untouched.

Everything is in the database, as the brute-force counters are
(:mod:`kumosubmit.credentials.throttle`): each process reads the spray state at
most once a second, and the known pair with one indexed query per attempt.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, FilteredRelation, Q, QuerySet
from django.db.models.functions import Greatest
from django.utils import timezone

from kumosubmit import metrics
from kumosubmit.conf import DEFAULTS, app_settings
from kumosubmit.credentials import throttle
from kumosubmit.credentials.models import (
    KnownPair,
    SmtpLogin,
    SprayEvent,
    SprayMark,
    normalize_username,
)
from kumosubmit.db import run_db, sqlite_turn

log = logging.getLogger(__name__)

PRIORITY = "priority"
BOUNDED = "bounded"

#: Seconds a process keeps the spray state it read (every process reads it for itself).
SPRAY_STATE_TTL = 1.0

#: Scope of the spray marks of names that are no login.
UNKNOWN_SCOPE = "unknown"


@dataclass(frozen=True)
class Policy:
    """``KUMOSUBMIT["AUTH_LANES"]`` merged over the defaults, read at call time."""

    enabled: bool
    known_pair_ttl: timedelta
    ipv4_prefix: int
    ipv6_prefix: int
    known_max_failures: int
    queue: int
    max_wait: float
    spray_queue: int
    spray_delay: float
    spray_window: int
    spray_login_addresses: int
    spray_unknown_addresses: int
    spray_hold: timedelta

    @property
    def refresh_after(self) -> timedelta:
        """A known pair's success is written again once its last one is this old."""
        return self.known_pair_ttl / 30

    def queue_length(self, spray: bool) -> int:
        return self.spray_queue if spray else self.queue


def settings_dict() -> dict[str, Any]:
    """The effective settings: a project may override just one key."""
    return {**DEFAULTS["AUTH_LANES"], **(app_settings.AUTH_LANES or {})}


def policy() -> Policy:
    values = settings_dict()
    return Policy(
        enabled=bool(values["ENABLED"]),
        known_pair_ttl=timedelta(seconds=values["KNOWN_PAIR_TTL"]),
        ipv4_prefix=int(values["IPV4_PREFIX"]),
        ipv6_prefix=int(values["IPV6_PREFIX"]),
        known_max_failures=int(values["KNOWN_MAX_FAILURES"]),
        queue=int(values["QUEUE"]),
        max_wait=float(values["MAX_WAIT"]),
        spray_queue=int(values["SPRAY_QUEUE"]),
        spray_delay=float(values["SPRAY_DELAY"]),
        spray_window=max(1, int(values["SPRAY_WINDOW"])),
        spray_login_addresses=int(values["SPRAY_LOGIN_ADDRESSES"]),
        spray_unknown_addresses=int(values["SPRAY_UNKNOWN_ADDRESSES"]),
        spray_hold=timedelta(seconds=values["SPRAY_HOLD"]),
    )


def network_key(address: str | None, policy: Policy) -> str | None:
    """The network a client address belongs to for known pairs: ``192.0.2.0/24``."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    prefix = policy.ipv4_prefix if ip.version == 4 else policy.ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


# -- before the password is checked ---------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """What is known of an attempt before its password is looked at."""

    login: str  # the case-folded login it names
    login_pk: int | None  # None: no such login
    network: str | None
    pair_pk: int | None
    known: bool  # the priority lane
    refresh: bool  # a success should write the pair (new, stale, or failures to clear)
    spray: bool  # a spray is going on: the bounded lane is tightened

    @property
    def lane(self) -> str:
        return PRIORITY if self.known else BOUNDED


_spray_state: tuple[float, bool] = (float("-inf"), False)


def _spray_now(policy: Policy, now: datetime) -> bool:
    """Whether a spray was seen within SPRAY_HOLD (read at most once a second per process)."""
    global _spray_state
    checked, active = _spray_state
    if time.monotonic() - checked < SPRAY_STATE_TTL:
        return active
    active = SprayEvent.objects.filter(last_seen_at__gt=now - policy.spray_hold).exists()
    _spray_state = (time.monotonic(), active)
    metrics.spray_active(active)
    return active


def forget_spray_state() -> None:
    """Read the spray state from the database at the next attempt (tests, admin)."""
    global _spray_state
    _spray_state = (float("-inf"), False)


def _standing(policy: Policy, authc: str, address: str | None, now: datetime) -> Standing:
    login = normalize_username(authc)
    network = network_key(address, policy)
    row = (
        SmtpLogin.objects.filter(username=login)
        .annotate(pair=FilteredRelation("known_pairs", condition=Q(known_pairs__network=network)))
        .values_list("pk", "pair__pk", "pair__last_success_at", "pair__failures")
        .first()
    )
    login_pk, pair_pk, last_success, failures = row or (None, None, None, None)
    known = (
        network is not None
        and pair_pk is not None
        and last_success is not None
        and last_success > now - policy.known_pair_ttl
        and (failures or 0) < policy.known_max_failures
    )
    refresh = (
        pair_pk is None
        or last_success is None
        or last_success < now - policy.refresh_after
        or bool(failures)
    )
    return Standing(login, login_pk, network, pair_pk, known, refresh, _spray_now(policy, now))


async def check(policy: Policy, address: str | None, authc: str) -> Standing:
    """The lane of this attempt and the spray state: one indexed query, no password."""
    return await run_db(_standing, policy, authc, address, timezone.now())


def throttle_and_lane(
    throttle_policy: throttle.Policy, policy: Policy, address: str | None, authc: str
) -> tuple[throttle.Standing, Standing | None]:
    """The brute-force standing and the lane of an attempt, in one trip to the database.

    Every AUTH needs both before its password is looked at; in a spray, most of the
    database thread's work is these lookups, and one trip instead of two halves its queue.
    A blocked attempt needs no lane (None): a flood of them costs one query each.
    """
    now = timezone.now()
    keys = throttle.Keys.of(throttle_policy, address, authc)
    standing = throttle._standing(throttle_policy, keys, now)
    if standing.block is not None:
        return standing, None
    return standing, _standing(policy, authc, address, now)


#: conn_meta.cache key: the lane standing looked up with the brute-force one, for this attempt.
PREFETCHED = "auth_lane_standing"


def prefetched(conn_meta: Any, address: str | None, authc: str) -> Standing | None:
    """The standing the penalties' lookup fetched for this very attempt, if it did."""
    found = conn_meta.cache.pop(PREFETCHED, None)
    if found is None or found[:2] != (address, authc):
        return None
    standing: Standing = found[2]
    return standing


# -- once the verdict is in -------------------------------------------------------------------


def record_success(policy: Policy, standing: Standing) -> None:
    """The login succeeded from this network: it is (again) a known pair, with no failures."""
    if standing.login_pk is None or standing.network is None:
        return
    now = timezone.now()
    pairs = KnownPair.objects.filter(login_id=standing.login_pk, network=standing.network)
    with sqlite_turn(), transaction.atomic():
        if pairs.update(last_success_at=now, failures=0):
            return
        try:
            with transaction.atomic():
                KnownPair.objects.create(
                    login_id=standing.login_pk, network=standing.network, last_success_at=now
                )
        except IntegrityError:  # another process wrote it first
            pairs.update(last_success_at=now, failures=0)


def record_known_failure(standing: Standing) -> None:
    """A wrong password from a known network: counted towards losing its priority."""
    if standing.pair_pk is None:
        return
    with sqlite_turn():
        KnownPair.objects.filter(pk=standing.pair_pk).update(failures=F("failures") + 1)


@dataclass(frozen=True)
class Spray:
    """A spray that a failure found going on (a new one, or one seen again)."""

    scope: str
    login: str
    addresses: int
    new: bool


def record_bounded_failure(
    policy: Policy, standing: Standing, address: str | None, now: datetime
) -> Spray | None:
    """Mark this failure's address for its scope and window; the spray it shows, if any."""
    address_key = throttle.address_key(address, policy.ipv6_prefix)
    if address_key is None:
        return None
    if standing.login_pk is not None:
        kind, login, threshold = (
            SprayEvent.Scope.LOGIN,
            standing.login,
            policy.spray_login_addresses,
        )
        scope = f"login {standing.login}"[:300]
    else:
        kind, login, threshold = SprayEvent.Scope.UNKNOWN, "", policy.spray_unknown_addresses
        scope = UNKNOWN_SCOPE
    window = int(now.timestamp()) // policy.spray_window
    _forget_old_marks(window)
    marks = SprayMark.objects.filter(scope=scope, window=window)
    if marks.filter(address=address_key).exists():
        return None  # this address is counted already in this window
    with sqlite_turn(), transaction.atomic():
        try:
            with transaction.atomic():
                SprayMark.objects.create(scope=scope, window=window, address=address_key)
        except IntegrityError:  # counted meanwhile by another session
            return None
        count = marks.count()
        if count < threshold:
            return None
        events = SprayEvent.objects.filter(
            scope=kind, login=login[:255], last_seen_at__gt=now - policy.spray_hold
        )
        if events.update(last_seen_at=now, addresses=Greatest(F("addresses"), count)):
            return Spray(kind, login, count, new=False)
        SprayEvent.objects.create(
            scope=kind, login=login[:255], started_at=now, last_seen_at=now, addresses=count
        )
    return Spray(kind, login, count, new=True)


#: The window whose older marks this process last deleted.
_pruned_window = 0


def _forget_old_marks(window: int) -> None:
    """Once per window and process, delete the marks of windows before the previous one:
    a botnet of thousands of addresses would leave thousands of rows a minute."""
    global _pruned_window
    if window <= _pruned_window:
        return
    _pruned_window = window
    with sqlite_turn():
        SprayMark.objects.filter(window__lt=window - 1).delete()


async def record_failure(policy: Policy, standing: Standing, address: str | None) -> Spray | None:
    """Count a refused password in its lane; the spray it shows (bounded lane), if any."""
    global _spray_state
    if standing.known:
        await run_db(record_known_failure, standing)
        return None
    spray = await run_db(record_bounded_failure, policy, standing, address, timezone.now())
    if spray is not None:
        _spray_state = (time.monotonic(), True)  # this process tightens at once
        metrics.spray_active(True)
        if spray.new:
            log.warning(
                "password spray: %s failed from %d addresses within %d s; the bounded AUTH "
                "lane is tightened",
                f"login {spray.login}" if spray.login else "unknown logins",
                spray.addresses,
                policy.spray_window,
            )
    return spray


def stale_rows(now: datetime | None = None) -> tuple[QuerySet[SprayMark], QuerySet[KnownPair]]:
    """What can go without changing any lane (``pruneaudit``): spray marks of past windows
    and known pairs past their TTL."""
    now = now or timezone.now()
    current = policy()
    window = int(now.timestamp()) // current.spray_window
    return (
        SprayMark.objects.filter(window__lt=window - 1),
        KnownPair.objects.filter(last_success_at__lt=now - current.known_pair_ttl),
    )
