"""Failed-AUTH penalties against brute force and password spraying.

Failures are counted in the database, so every listener process, and every
host sharing one PostgreSQL, sees the same counts (SQLite serves one host).
There are three kinds of counter (:class:`AuthFailureCounter`):

- ``address``: the client address. An IPv6 client counts by its network
  (``IPV6_PREFIX``, a /64 by default): a host owns a whole /64 and could
  otherwise take a fresh address for every guess.
- ``login``: the authentication identity (authc), case-folded.
- ``pair``: one login from one address. It never blocks by itself; it says
  which addresses a login block applies to.

The rules, after Dovecot's ``auth_penalty`` and Stalwart's fail2ban
(settings in ``KUMOSUBMIT["BRUTE_FORCE"]``):

- A count starts over when its last failure is older than ``WINDOW`` seconds
  (as Dovecot forgets a penalty after a quiet hour), or when a block has run
  out since: a slow attacker who keeps trying is still counted.
- Each failure is answered after ``DELAY * 2**(n-1)`` seconds, at most
  ``MAX_DELAY``, where n is the count of the client's address; only that
  session waits.
- An address with ``IP_BLOCK_AFTER`` failures is blocked for
  ``BLOCK_DURATION`` seconds: any AUTH from it is answered ``421`` and the
  connection closed, before the hook runs, so no argon2 work is done.
- A login with ``LOGIN_BLOCK_AFTER`` failures (from anywhere) is blocked for
  ``BLOCK_DURATION``, but only for the addresses that have themselves failed
  for that login within ``WINDOW``: they get ``454`` before the hook runs.
  Any other address may still try the login, so its owner is not locked out
  by someone else's guessing, and each attacking address gets one guess at a
  blocked login per window instead of ``IP_BLOCK_AFTER``.
- A success clears its address's count (as Dovecot does) and the pair, never
  the login's count: a valid login of one's own lifts no block on another.
  An active address block is never cleared by a success.

The check before the hook is one indexed query for all three keys, and it also
tells whether a success will have anything to clear (most have not, and cost no
further query); a failure is one transaction of atomic ``UPDATE``s
(``failures = failures + 1`` decided by the database, so concurrent processes
cannot lose counts) with an ``INSERT`` on a miss. Keys are always updated in the same order, so two
sessions cannot deadlock on PostgreSQL.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Case, DateTimeField, F, IntegerField, Q, QuerySet, Value, When
from django.utils import timezone

from kumosubmit.conf import DEFAULTS, app_settings
from kumosubmit.credentials.models import AuthFailureCounter, normalize_username
from kumosubmit.db import run_db, sqlite_turn

log = logging.getLogger(__name__)

ADDRESS = AuthFailureCounter.Kind.ADDRESS
LOGIN = AuthFailureCounter.Kind.LOGIN
PAIR = AuthFailureCounter.Kind.PAIR

#: Longest login kept in a key; longer ones share the counter of their first 255 characters.
MAX_LOGIN_LENGTH = 255


@dataclass(frozen=True)
class Policy:
    """``KUMOSUBMIT["BRUTE_FORCE"]`` merged over the defaults, read at call time."""

    enabled: bool
    window: timedelta
    delay: float
    max_delay: float
    ip_block_after: int | None
    login_block_after: int | None
    block_duration: timedelta
    ipv6_prefix: int

    def delay_for(self, failures: int) -> float:
        """Seconds to wait before answering the ``failures``-th failure of an address."""
        if failures < 1 or self.delay <= 0:
            return 0.0
        return float(min(self.delay * 2 ** min(failures - 1, 64), self.max_delay))


def settings_dict() -> dict[str, Any]:
    """The effective settings: a project may override just one key."""
    return {**DEFAULTS["BRUTE_FORCE"], **(app_settings.BRUTE_FORCE or {})}


def policy() -> Policy:
    """The current policy (values are validated by the system check kumosubmit.E010)."""
    values = settings_dict()
    return Policy(
        enabled=bool(values["ENABLED"]),
        window=timedelta(seconds=values["WINDOW"]),
        delay=float(values["DELAY"]),
        max_delay=float(values["MAX_DELAY"]),
        ip_block_after=values["IP_BLOCK_AFTER"],
        login_block_after=values["LOGIN_BLOCK_AFTER"],
        block_duration=timedelta(seconds=values["BLOCK_DURATION"]),
        ipv6_prefix=int(values["IPV6_PREFIX"]),
    )


def address_key(address: str | None, ipv6_prefix: int = 64) -> str | None:
    """The counter value of a client address: IPv4 as is, IPv6 as its network."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # a dual-stack socket's view of an IPv4 client
            return str(ip.ipv4_mapped)
        if ipv6_prefix < 128:
            return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


def login_key(authc: str) -> str:
    return normalize_username(authc)[:MAX_LOGIN_LENGTH]


@dataclass(frozen=True)
class Keys:
    """The counters one AUTH attempt touches (no address: only the login's)."""

    address: str | None
    login: str

    @classmethod
    def of(cls, policy: Policy, address: str | None, authc: str) -> Keys:
        return cls(address_key(address, policy.ipv6_prefix), login_key(authc))

    @property
    def pair(self) -> str | None:
        # The address has no space, so the first space separates the two.
        return f"{self.address} {self.login}" if self.address else None

    def items(self) -> list[tuple[str, str]]:
        """(kind, value) in a fixed order: the order rows are locked in."""
        if self.address is None or self.pair is None:
            return [(LOGIN.value, self.login)]
        return [(ADDRESS.value, self.address), (LOGIN.value, self.login), (PAIR.value, self.pair)]

    def counters(self) -> list[AuthFailureCounter]:
        """Their counters that exist (one query)."""
        return list(self.queryset())

    def queryset(self) -> QuerySet[AuthFailureCounter]:
        query = Q()
        for kind, value in self.items():
            query |= Q(kind=kind, value=value)
        return AuthFailureCounter.objects.filter(query).order_by()


@dataclass(frozen=True)
class Block:
    """Why an attempt is refused before its password is checked."""

    kind: str  # "address" or "login"
    value: str
    until: datetime

    def as_meta(self) -> dict[str, str]:
        """What conn_meta (and so the audit row) keeps of it."""
        return {"kind": self.kind, "value": self.value, "until": self.until.isoformat()}


@dataclass(frozen=True)
class Standing:
    """What the check before an attempt found: a block, and whether a success has anything
    to forget."""

    block: Block | None
    #: The address or the pair had failures counted (see :func:`forget_failures`).
    has_failures: bool


def _standing(policy: Policy, keys: Keys, now: datetime) -> Standing:
    rows = {(row.kind, row.value): row for row in keys.counters()}
    has_failures = any(key in rows for key in keys.items() if key[0] != LOGIN.value)
    return Standing(_blocking(policy, keys, rows, now), has_failures)


def _blocking(
    policy: Policy, keys: Keys, rows: dict[tuple[str, str], AuthFailureCounter], now: datetime
) -> Block | None:
    address = rows.get((ADDRESS.value, keys.address or ""))
    if address is not None and address.is_blocked(now):
        assert address.blocked_until is not None
        return Block(ADDRESS.value, address.value, address.blocked_until)
    login = rows.get((LOGIN.value, keys.login))
    if login is None or not login.is_blocked(now):
        return None
    assert login.blocked_until is not None
    pair = rows.get((PAIR.value, keys.pair or ""))
    failed_here = (
        pair is not None
        and pair.failures > 0
        and pair.last_failure_at is not None
        and pair.last_failure_at > now - policy.window
    )
    # Without an address we cannot tell the owner from the attacker: refuse.
    if failed_here or keys.address is None:
        return Block(LOGIN.value, login.value, login.blocked_until)
    return None


async def check(policy: Policy, address: str | None, authc: str) -> Standing:
    """The standing of this attempt: one query, no password involved."""
    return await run_db(_standing, policy, Keys.of(policy, address, authc), timezone.now())


@dataclass(frozen=True)
class Failure:
    """What counting one failure found."""

    address_failures: int  # the address's count, for the delay (0: no address)
    new_blocks: tuple[Block, ...]  # blocks this failure started


def _stale(policy: Policy, now: datetime) -> Q:
    """Counters whose next failure starts over: as good as none at all."""
    # A block in force is never reset, even if its last failure is older than WINDOW.
    return ~Q(blocked_until__gt=now) & (
        Q(failures=0)
        | Q(last_failure_at__isnull=True)
        | Q(last_failure_at__lt=now - policy.window)
        | Q(blocked_until__lte=now)
    )


def stale_counters(now: datetime | None = None) -> QuerySet[AuthFailureCounter]:
    """Counters that can go without changing any delay or block (``pruneaudit``)."""
    return AuthFailureCounter.objects.filter(_stale(policy(), now or timezone.now()))


def _count(kind: str, value: str, threshold: int | None, policy: Policy, now: datetime) -> None:
    """Count one failure for one key in a single UPDATE, or INSERT the key's first row."""
    stale = _stale(policy, now)
    block_at_once = threshold is not None and threshold <= 1
    block = now + policy.block_duration
    no_date = Value(None, output_field=DateTimeField())
    when_blocked = [When(stale, then=Value(block) if block_at_once else no_date)]
    if threshold is not None:
        when_blocked.append(
            When(Q(blocked_until__isnull=True, failures__gte=threshold - 1), then=Value(block))
        )
    changes = {
        "failures": Case(
            When(stale, then=Value(1)), default=F("failures") + 1, output_field=IntegerField()
        ),
        "first_failure_at": Case(
            When(stale, then=Value(now)),
            default=F("first_failure_at"),
            output_field=DateTimeField(),
        ),
        "last_failure_at": Value(now),
        "blocked_until": Case(
            *when_blocked, default=F("blocked_until"), output_field=DateTimeField()
        ),
    }
    rows = AuthFailureCounter.objects.filter(kind=kind, value=value)
    if rows.update(**changes):
        return
    try:
        with transaction.atomic():  # a savepoint: a lost race must not end the transaction
            AuthFailureCounter.objects.create(
                kind=kind,
                value=value,
                failures=1,
                first_failure_at=now,
                last_failure_at=now,
                blocked_until=block if block_at_once else None,
            )
    except IntegrityError:  # another process inserted it first: count on its row
        rows.update(**changes)


def _record_failure(policy: Policy, keys: Keys, now: datetime) -> Failure:
    thresholds = {
        ADDRESS.value: policy.ip_block_after,
        LOGIN.value: policy.login_block_after,
        PAIR.value: None,
    }
    with transaction.atomic():
        for kind, value in keys.items():
            _count(kind, value, thresholds[kind], policy, now)
        rows = {(row.kind, row.value): row for row in keys.counters()}
    address = rows.get((ADDRESS.value, keys.address or ""))
    # A block that ends exactly BLOCK_DURATION after this failure was started by it.
    started = now + policy.block_duration
    new_blocks = tuple(
        Block(row.kind, row.value, started) for row in rows.values() if row.blocked_until == started
    )
    return Failure(address.failures if address else 0, new_blocks)


def block_address(policy: Policy, address: str | None) -> Block | None:
    """Block ``address`` now, for ``BLOCK_DURATION``, on every host sharing the database
    (a decoy login was tried from it). None without an address."""
    key = address_key(address, policy.ipv6_prefix)
    if key is None:
        return None
    now = timezone.now()
    with transaction.atomic():
        _count(ADDRESS.value, key, 1, policy, now)  # a threshold of 1: blocked at once
        row = AuthFailureCounter.objects.get(kind=ADDRESS.value, value=key)
    assert row.blocked_until is not None
    return Block(ADDRESS.value, key, row.blocked_until)


async def record_failure(policy: Policy, address: str | None, authc: str) -> Failure:
    """Count a refused password for the address, the login and the pair."""
    failure = await run_db(_record_failure, policy, Keys.of(policy, address, authc), timezone.now())
    for block in failure.new_blocks:
        log.warning(
            "blocked %s %s until %s after too many failed AUTH attempts",
            block.kind,
            block.value,
            block.until.isoformat(),
        )
    return failure


def forget_failures(policy: Policy, address: str | None, authc: str) -> None:
    """After a success: forget the address's failures and the pair's, but not the login's.

    Called in the database thread, in the same trip as the session's other work
    after a good AUTH (kumosubmit/protocol/handler.py), and only when the
    attempt's :class:`Standing` saw failures to forget: most successes have none,
    and cost no query here (a write transaction would queue on SQLite behind every
    other writer). Failures that other sessions from the address count while this
    one's password is being verified are forgotten with the rest when there were
    some before; when there were none, they stay counted.
    """
    keys = Keys.of(policy, address, authc)
    if keys.address is None:
        return
    counters = AuthFailureCounter.objects
    now = timezone.now()
    # In the order _record_failure locks rows (address, then pair): no deadlock.
    with sqlite_turn(), transaction.atomic():
        counters.filter(kind=ADDRESS.value, value=keys.address).exclude(
            blocked_until__gt=now
        ).delete()
        counters.filter(kind=PAIR.value, value=keys.pair).delete()


def lift(queryset: QuerySet[AuthFailureCounter]) -> int:
    """Lift the blocks of the given counters and start their counts afresh."""
    return queryset.update(failures=0, first_failure_at=None, blocked_until=None)
