"""Where the limits' state is kept: the database (default) or Redis, shared by every host.

Each rule of each credential is a GCRA bucket (the generic cell rate algorithm,
as KumoMTA's ``kumo.make_throttle``): one number, ``tat``, the time at which its
allowance is full again. A reservation of ``cost`` moves it on by ``cost *
period / count`` from ``max(tat, now)``, and is refused when that would put it
more than ``period`` past now. So a rule of ``30/minute`` lets a burst of 30
through at once, then one every two seconds, and never 31 in any minute. A
release moves ``tat`` back by as much (never before now).

A reservation of several buckets (a message counts against the login's rules and
the app password's) is all or nothing. Time is the host's clock in microseconds
since the epoch; hosts that share the state must keep their clocks in step (NTP),
as an offset of a second shifts a window by that much.

The backend is ``KUMOSUBMIT["SEND_LIMITS_BACKEND"]`` (a dotted path), made once
per process: :class:`DatabaseBackend` (one row per bucket, one statement per
reservation) or :class:`CacheBackend` (Redis through Django's ``RedisCache``,
one Lua script per reservation).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils.module_loading import import_string

from kumosubmit.conf import app_settings, clears_on_setting_change
from kumosubmit.db import run_db, sqlite_turn
from kumosubmit.sendlimits.rules import Rule


def now_us() -> int:
    """The host's clock, in microseconds since the epoch."""
    return time.time_ns() // 1000


@dataclass(frozen=True, order=True)
class Bucket:
    """One rule of one credential: ``key`` is ``login:<pk>`` or ``app:<pk>``."""

    key: str
    kind: str
    rule: Rule
    login_id: int
    app_password_id: int | None = None

    @property
    def name(self) -> str:
        """The rule's slot: one per kind and period (a new count keeps the state)."""
        return f"{self.kind}/{self.rule.period}"


@dataclass(frozen=True)
class Refusal:
    """A reservation refused: the first bucket that was full, and when it has room."""

    bucket: Bucket
    retry_after: float  # seconds


#: (bucket, cost) pairs: what one reservation takes.
Items = Sequence[tuple[Bucket, int]]


def _ordered(items: Items) -> list[tuple[Bucket, int]]:
    # One order for every writer, so two reservations never wait on each other in a cycle.
    return sorted(items, key=lambda item: (item[0].key, item[0].name))


def used(rule: Rule, tat: int | None, now: int) -> int:
    """How much of ``rule``'s allowance is in use at ``now`` (0 to count)."""
    if tat is None or tat <= now:
        return 0
    return min(rule.count, math.ceil((tat - now) / rule.interval_us))


class SendLimitBackend(abc.ABC):
    """The contract: atomic reservations, releases, and a look at the use.

    The sync methods do the work; the async ones (what the SMTP handlers call) run
    them off the event loop. ``now`` is :func:`now_us` unless a caller gives it.
    """

    @abc.abstractmethod
    def reserve(self, items: Items, now: int) -> Refusal | None:
        """Take ``cost`` from every bucket, or from none: None, or why not."""

    @abc.abstractmethod
    def release(self, items: Items, now: int) -> None:
        """Give back what a reservation took (a transaction that was not stored)."""

    @abc.abstractmethod
    def tats(self, buckets: Sequence[Bucket]) -> dict[Bucket, int]:
        """The stored ``tat`` of each bucket that has state."""

    @abc.abstractmethod
    def claim_notice(self, bucket: Bucket, now: int) -> bool:
        """True once per window of ``bucket`` (its period from now): whoever gets True
        sends the notice, every other process and host gets False."""

    def usage(self, buckets: Sequence[Bucket], now: int | None = None) -> dict[Bucket, int]:
        """How much of each bucket is in use now."""
        now = now_us() if now is None else now
        tats = self.tats(buckets)
        return {bucket: used(bucket.rule, tats.get(bucket), now) for bucket in buckets}

    async def _run(self, func: Any, *args: Any) -> Any:
        return await run_db(func, *args)

    async def areserve(self, items: Items) -> Refusal | None:
        return await self._run(self.reserve, items, now_us())

    async def arelease(self, items: Items) -> None:
        await self._run(self.release, items, now_us())

    async def aclaim_notice(self, bucket: Bucket) -> bool:
        return await self._run(self.claim_notice, bucket, now_us())


# -- the database ------------------------------------------------------------------------


class DatabaseBackend(SendLimitBackend):
    """GCRA rows in ``kumosubmit_sendlimitstate``, one per (credential, kind, period).

    A reservation is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING``
    over its buckets: a row is moved on only where the rule allows, and the rows
    returned are those that allowed it. If one did not, what the others took is put
    back in the same transaction: all or nothing. Each login and app password has
    rows of its own, so no row is shared by all senders: logins never wait on each
    other, and the sessions of one login wait for one short statement of each other's.

    The reservations a process's sessions ask for while one is being made are made
    together, in one trip to the database thread and one transaction (as the spool
    commits messages together), each still decided on its own. On PostgreSQL the
    commit does not wait for the disk (``synchronous_commit = off`` for this
    transaction only), on SQLite likewise (``synchronous = OFF`` for its length): a
    crash may forget the last few milliseconds of counts, which a limit can afford,
    and no message's commit waits behind a second flush. A transaction that makes
    several reservations first locks the existing rows of all of them in one order,
    so two processes cannot deadlock on them.
    """

    table = "kumosubmit_sendlimitstate"

    def __init__(self) -> None:
        # Per event loop: the reservations waiting for the next trip, and the task making
        # them (tests run a loop per listener; a process has one).
        self._groups: dict[asyncio.AbstractEventLoop, _Group] = {}

    def _greatest(self, vendor: str) -> str:
        return "GREATEST" if vendor == "postgresql" else "MAX"

    def reserve(self, items: Items, now: int) -> Refusal | None:
        return self.reserve_many([items], now)[0]

    def reserve_many(self, requests: Sequence[Items], now: int) -> list[Refusal | None]:
        """Make each reservation, all or nothing each, in one transaction."""
        db = connections[DEFAULT_DB_ALIAS]
        ordered = [_ordered(items) for items in requests]
        results: list[Refusal | None] = []
        with _unflushed(db), transaction.atomic():
            with db.cursor() as cursor:
                if db.vendor == "postgresql":
                    cursor.execute("SET LOCAL synchronous_commit TO OFF")
                    if len(ordered) > 1:
                        self._lock(cursor, db, ordered)
                for items in ordered:
                    results.append(self._reserve_one(cursor, db, items, now))
        return results

    def _lock(self, cursor: Any, db: Any, requests: list[list[tuple[Bucket, int]]]) -> None:
        """Lock the existing rows of every bucket, in one order (no deadlocks)."""
        q = db.ops.quote_name
        keys = sorted({bucket.key for items in requests for bucket, _ in items})
        cursor.execute(
            f"SELECT 1 FROM {q(self.table)} WHERE {q('key')} IN ({', '.join(['%s'] * len(keys))})"  # noqa: S608
            f" ORDER BY {q('key')}, {q('rule')} FOR UPDATE",
            keys,
        )

    def _reserve_one(
        self, cursor: Any, db: Any, items: list[tuple[Bucket, int]], now: int
    ) -> Refusal | None:
        if not items:
            return None
        greatest = self._greatest(db.vendor)
        table = db.ops.quote_name(self.table)
        q = db.ops.quote_name
        rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(items))
        params: list[Any] = []
        for bucket, cost in items:
            params += [
                bucket.key,
                bucket.name,
                bucket.login_id,
                bucket.app_password_id,
                bucket.kind,
                bucket.rule.count,
                bucket.rule.period,
                now + cost * bucket.rule.interval_us,
            ]
        # EXCLUDED.tat - now is this reservation's cost in microseconds.
        moved = f"{greatest}({table}.tat, %s) + (EXCLUDED.tat - %s)"
        columns = ", ".join(
            q(name)
            for name in ("key", "rule", "login_id", "app_password_id", "kind", "count", "period")
        )
        sql = (
            f"INSERT INTO {table} ({columns}, tat) VALUES {rows}"  # noqa: S608
            f" ON CONFLICT ({q('key')}, {q('rule')}) DO UPDATE"
            f" SET tat = {moved}, {q('count')} = EXCLUDED.{q('count')}"
            f" WHERE {moved} <= %s + CAST(EXCLUDED.period AS BIGINT) * 1000000"
            f" RETURNING {q('key')}, {q('rule')}"
        )
        cursor.execute(sql, [*params, now, now, now, now, now])
        taken = {(key, rule) for key, rule in cursor.fetchall()}
        refused = [item for item in items if (item[0].key, item[0].name) not in taken]
        if not refused:
            return None
        # All or nothing: put back what the buckets with room took.
        self._give_back(cursor, db, [item for item in items if item not in refused], now)
        tats = self.tats([bucket for bucket, _ in refused])
        return _refusal(refused, tats, now)

    def _give_back(self, cursor: Any, db: Any, items: Items, now: int) -> None:
        q = db.ops.quote_name
        sql = (
            f"UPDATE {q(self.table)} SET tat = {self._greatest(db.vendor)}(tat - %s, %s)"  # noqa: S608
            f" WHERE {q('key')} = %s AND {q('rule')} = %s"
        )
        for bucket, cost in items:
            cursor.execute(sql, [cost * bucket.rule.interval_us, now, bucket.key, bucket.name])

    async def areserve(self, items: Items) -> Refusal | None:
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            for old in [other for other in self._groups if other.is_closed()]:
                del self._groups[old]
            group = self._groups[loop] = _Group(self)
        return await group.reserve(items)

    def release(self, items: Items, now: int) -> None:
        items = _ordered(items)
        if not items:
            return
        db = connections[DEFAULT_DB_ALIAS]
        with _unflushed(db), transaction.atomic():
            with db.cursor() as cursor:
                if db.vendor == "postgresql":
                    cursor.execute("SET LOCAL synchronous_commit TO OFF")
                self._give_back(cursor, db, items, now)

    def tats(self, buckets: Sequence[Bucket]) -> dict[Bucket, int]:
        from kumosubmit.sendlimits.models import SendLimitState

        if not buckets:
            return {}
        found = {
            (key, rule): tat
            for key, rule, tat in SendLimitState.objects.filter(
                key__in={bucket.key for bucket in buckets}
            ).values_list("key", "rule", "tat")
        }
        return {b: found[(b.key, b.name)] for b in buckets if (b.key, b.name) in found}

    def claim_notice(self, bucket: Bucket, now: int) -> bool:
        from django.db.models import Q

        from kumosubmit.sendlimits.models import SendLimitState

        with _unflushed(connections[DEFAULT_DB_ALIAS]):
            return bool(
                SendLimitState.objects.filter(key=bucket.key, rule=bucket.name)
                .filter(Q(noticed_until__isnull=True) | Q(noticed_until__lte=now))
                .update(noticed_until=now + bucket.rule.period_us)
            )


class _Group:
    """The reservations of one event loop's sessions, made together (group commit).

    While one trip to the database thread is under way, the reservations asked for
    meanwhile wait, and the next trip makes them all; alone, a reservation goes at once.
    A session that goes away while its reservation is being made (a timeout, a lost
    connection) has it given back.
    """

    def __init__(self, backend: DatabaseBackend) -> None:
        self.backend = backend
        self.waiting: list[tuple[Items, asyncio.Future[Refusal | None]]] = []
        self.task: asyncio.Task[None] | None = None

    async def reserve(self, items: Items) -> Refusal | None:
        future: asyncio.Future[Refusal | None] = asyncio.get_running_loop().create_future()
        self.waiting.append((items, future))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    results = await run_db(
                        self.backend.reserve_many, [items for items, _ in batch], now_us()
                    )
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                abandoned: list[tuple[Bucket, int]] = []
                for (items, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                    elif result is None:  # taken for a session that is gone
                        abandoned += items
                if abandoned:
                    with contextlib.suppress(Exception):
                        await self.backend.arelease(abandoned)
        finally:
            self.task = None


@contextlib.contextmanager
def _unflushed(db: Any) -> Iterator[None]:
    """On SQLite, the commits made inside this wait for no disk flush (``synchronous =
    OFF`` for their length, then the connection's own setting again), and take their turn
    at the writer (db.sqlite_turn). The counts may lose their last commits in a power cut;
    the WAL stays consistent, and the next flushed commit (a message's) writes them too.
    PostgreSQL has ``SET LOCAL synchronous_commit`` for this, inside the transaction."""
    if db.vendor != "sqlite":
        yield
        return
    with sqlite_turn():
        db.ensure_connection()
        with db.cursor() as cursor:
            cursor.execute("PRAGMA synchronous")
            (level,) = cursor.fetchone()
            if db.in_atomic_block:  # cannot change it inside a transaction
                level = None
            else:
                cursor.execute("PRAGMA synchronous = OFF")
        try:
            yield
        finally:
            if level is not None:
                with db.cursor() as cursor:
                    cursor.execute(f"PRAGMA synchronous = {int(level):d}")


def _refusal(refused: list[tuple[Bucket, int]], tats: dict[Bucket, int], now: int) -> Refusal:
    """The refused bucket that frees up last, and when it does."""
    worst: Refusal | None = None
    for bucket, cost in refused:
        tat = max(tats.get(bucket, now), now)
        wait = max(0, tat + cost * bucket.rule.interval_us - bucket.rule.period_us - now)
        if worst is None or wait / 1e6 > worst.retry_after:
            worst = Refusal(bucket, wait / 1e6)
    assert worst is not None
    return worst


# -- Redis, through Django's cache framework ------------------------------------------

#: KEYS: the buckets; ARGV: now, then (cost in µs, period in µs) per bucket.
#: Returns {0, 0} when every bucket took its cost, else {i, µs to wait} for bucket i.
_RESERVE = """
local now = tonumber(ARGV[1])
local moved = {}
for i, key in ipairs(KEYS) do
  local cost = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local stored = redis.call('GET', key)
  local tat = stored and tonumber(stored) or now
  if tat < now then tat = now end
  local new = tat + cost
  if new > now + period then
    return {i, string.format('%.0f', new - period - now)}
  end
  moved[i] = new
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', moved[i]), 'PX',
             math.ceil((moved[i] - now) / 1000) + 1000)
end
return {0, 0}
"""

#: KEYS: the buckets; ARGV: now, then the cost in µs per bucket.
_RELEASE = """
local now = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local stored = redis.call('GET', key)
  if stored then
    local tat = tonumber(stored) - tonumber(ARGV[i + 1])
    if tat > now then
      redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
    else
      redis.call('DEL', key)
    end
  end
end
return 0
"""


class CacheBackend(SendLimitBackend):
    """GCRA state in Redis, through the cache ``SEND_LIMITS_CACHE`` names in ``CACHES``.

    That cache must be Django's own ``django.core.cache.backends.redis.RedisCache``
    (the ``redis`` package): the reservation is a Lua script, run atomically by
    Redis, on the client that cache keeps (its connection pool, its key prefix and
    version). A key expires once its bucket is full again, so Redis holds only
    the credentials sending now. The calls run in a small thread pool of their own,
    never on the event loop and never in the ORM's thread.
    """

    def __init__(self) -> None:
        from django.core.cache import caches
        from django.core.cache.backends.redis import RedisCache

        cache = caches[app_settings.SEND_LIMITS_CACHE]
        if not isinstance(cache, RedisCache):
            raise TypeError(
                f"SEND_LIMITS_CACHE {app_settings.SEND_LIMITS_CACHE!r} is a "
                f"{type(cache).__name__}, not django.core.cache.backends.redis.RedisCache"
            )
        self.cache = cache
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kumosubmit-limits")
        client = self._client()
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)

    def _client(self) -> Any:
        # RedisCache keeps one pool per server; its writer is the first LOCATION.
        return self.cache._cache.get_client(None, write=True)

    def _key(self, bucket: Bucket) -> str:
        return self.cache.make_and_validate_key(f"kumosubmit:limit:{bucket.key}:{bucket.name}")

    def _notice_key(self, bucket: Bucket) -> str:
        return self.cache.make_and_validate_key(f"kumosubmit:notice:{bucket.key}:{bucket.name}")

    async def _run(self, func: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(func, *args))

    def reserve(self, items: Items, now: int) -> Refusal | None:
        items = _ordered(items)
        if not items:
            return None
        args: list[int] = [now]
        for bucket, cost in items:
            args += [cost * bucket.rule.interval_us, bucket.rule.period_us]
        index, wait = self._reserve(
            keys=[self._key(bucket) for bucket, _ in items], args=args, client=self._client()
        )
        if int(index) == 0:
            return None
        return Refusal(items[int(index) - 1][0], int(wait) / 1e6)

    def release(self, items: Items, now: int) -> None:
        items = _ordered(items)
        if items:
            self._release(
                keys=[self._key(bucket) for bucket, _ in items],
                args=[now, *(cost * bucket.rule.interval_us for bucket, cost in items)],
                client=self._client(),
            )

    def tats(self, buckets: Sequence[Bucket]) -> dict[Bucket, int]:
        if not buckets:
            return {}
        values = self._client().mget([self._key(bucket) for bucket in buckets])
        return {b: int(v) for b, v in zip(buckets, values, strict=True) if v is not None}

    def claim_notice(self, bucket: Bucket, now: int) -> bool:
        window_ms = max(1, bucket.rule.period_us // 1000)
        return bool(self._client().set(self._notice_key(bucket), 1, nx=True, px=window_ms))


@clears_on_setting_change
@functools.cache
def get_backend() -> SendLimitBackend:
    """The configured backend (``KUMOSUBMIT["SEND_LIMITS_BACKEND"]``), made once."""
    return import_string(app_settings.SEND_LIMITS_BACKEND)()
