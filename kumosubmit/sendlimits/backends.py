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
from collections.abc import Callable, Iterator, Sequence
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

    def reserve(self, items: Items, now: int) -> Refusal | None:
        return self.reserve_many([items], now)[0]

    def reserve_many(self, requests: Sequence[Items], now: int) -> list[Refusal | None]:
        """Make each reservation, all or nothing each, in one transaction.

        Reservations that share no bucket go into one statement; one that shares a bucket
        with an earlier one waits for the next statement (a row is updated once per
        statement).
        """
        db = connections[DEFAULT_DB_ALIAS]
        results: list[Refusal | None] = [None] * len(requests)
        rounds: list[list[tuple[int, list[tuple[Bucket, int]]]]] = []
        waiting = [(n, _ordered(items)) for n, items in enumerate(requests) if items]
        while waiting:
            this_round, later, seen = [], [], set()
            for n, items in waiting:
                names = {(bucket.key, bucket.name) for bucket, _ in items}
                if names & seen:
                    later.append((n, items))
                else:
                    seen |= names
                    this_round.append((n, items))
            rounds.append(this_round)
            waiting = later
        if not rounds:
            return results
        with _unflushed_transaction(db) as (cursor, sql):
            if db.vendor == "postgresql" and len(rounds) > 1:
                self._lock(cursor, sql, [items for r in rounds for _, items in r])
            for this_round in rounds:
                for n, refusal in self._reserve_round(cursor, sql, this_round, now):
                    results[n] = refusal
        return results

    def _lock(self, cursor: Any, sql: _Sql, requests: list[list[tuple[Bucket, int]]]) -> None:
        """Lock the existing rows of every bucket, in one order (no deadlocks)."""
        keys = sorted({bucket.key for items in requests for bucket, _ in items})
        cursor.execute(sql.lock(len(keys)), keys)

    def _reserve_round(
        self,
        cursor: Any,
        sql: _Sql,
        requests: list[tuple[int, list[tuple[Bucket, int]]]],
        now: int,
    ) -> list[tuple[int, Refusal | None]]:
        """One statement for reservations that share no bucket; each decided on its own."""
        rows = sorted(
            ((bucket, cost) for _, items in requests for bucket, cost in items),
            key=lambda item: (item[0].key, item[0].name),
        )
        params: list[Any] = []
        for bucket, cost in rows:
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
        cursor.execute(sql.reserve(len(rows)), [*params, now, now, now, now, now])
        taken = {(key, rule) for key, rule in cursor.fetchall()}
        results: list[tuple[int, Refusal | None]] = []
        for n, items in requests:
            refused = [item for item in items if (item[0].key, item[0].name) not in taken]
            if not refused:
                results.append((n, None))
                continue
            # All or nothing: put back what the buckets with room took for it.
            self._give_back(cursor, sql, [item for item in items if item not in refused], now)
            cursor.execute(sql.tats(len(refused)), [b.key for b, _ in refused])
            found = {(key, rule): tat for key, rule, tat in cursor.fetchall()}
            tats = {b: found[(b.key, b.name)] for b, _ in refused if (b.key, b.name) in found}
            results.append((n, _refusal(refused, tats, now)))
        return results

    def _give_back(self, cursor: Any, sql: _Sql, items: Items, now: int) -> None:
        for bucket, cost in items:
            cursor.execute(
                sql.give_back, [cost * bucket.rule.interval_us, now, bucket.key, bucket.name]
            )

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
        with _unflushed_transaction(connections[DEFAULT_DB_ALIAS]) as (cursor, sql):
            self._give_back(cursor, sql, items, now)

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
        with _unflushed_transaction(connections[DEFAULT_DB_ALIAS]) as (cursor, sql):
            cursor.execute(
                sql.claim_notice, [now + bucket.rule.period_us, bucket.key, bucket.name, now]
            )
            return bool(cursor.rowcount)


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


class _Sql:
    """The statements of the database backend for one vendor, made once (the placeholders
    of its DB-API driver: the hot path skips Django's cursor wrapper)."""

    def __init__(self, vendor: str, quote: Callable[[str], str]) -> None:
        self.vendor = vendor
        self.ph = "?" if vendor == "sqlite" else "%s"
        self.greatest = "GREATEST" if vendor == "postgresql" else "MAX"
        self.table = quote(DatabaseBackend.table)
        self.key, self.rule, self.count = quote("key"), quote("rule"), quote("count")
        self.quote = quote
        ph, t, k, r = self.ph, self.table, self.key, self.rule
        self.give_back = (
            f"UPDATE {t} SET tat = {self.greatest}(tat - {ph}, {ph})"  # noqa: S608
            f" WHERE {k} = {ph} AND {r} = {ph}"
        )
        self.claim_notice = (
            f"UPDATE {t} SET noticed_until = {ph} WHERE {k} = {ph} AND {r} = {ph}"  # noqa: S608
            f" AND (noticed_until IS NULL OR noticed_until <= {ph})"
        )

    @functools.cache  # noqa: B019 (one _Sql per vendor, kept for the process)
    def reserve(self, rows: int) -> str:
        ph, t = self.ph, self.table
        # EXCLUDED.tat - now is the reservation's cost in microseconds.
        moved = f"{self.greatest}({t}.tat, {ph}) + (EXCLUDED.tat - {ph})"
        names = ("key", "rule", "login_id", "app_password_id", "kind", "count", "period")
        columns = ", ".join(self.quote(name) for name in names)
        values = ", ".join([f"({', '.join([ph] * 8)})"] * rows)
        return (
            f"INSERT INTO {t} ({columns}, tat) VALUES {values}"  # noqa: S608
            f" ON CONFLICT ({self.key}, {self.rule}) DO UPDATE"
            f" SET tat = {moved}, {self.count} = EXCLUDED.{self.count}"
            f" WHERE {moved} <= {ph} + CAST(EXCLUDED.period AS BIGINT) * 1000000"
            f" RETURNING {self.key}, {self.rule}"
        )

    @functools.cache  # noqa: B019
    def lock(self, keys: int) -> str:
        return (
            f"SELECT 1 FROM {self.table} WHERE {self.key} IN ({', '.join([self.ph] * keys)})"  # noqa: S608
            f" ORDER BY {self.key}, {self.rule} FOR UPDATE"
        )

    @functools.cache  # noqa: B019
    def tats(self, keys: int) -> str:
        return (
            f"SELECT {self.key}, {self.rule}, tat FROM {self.table}"  # noqa: S608
            f" WHERE {self.key} IN ({', '.join([self.ph] * keys)})"
        )


_statements: dict[str, _Sql] = {}


@contextlib.contextmanager
def _unflushed_transaction(db: Any) -> Iterator[tuple[Any, _Sql]]:
    """A transaction on the connection's own DB-API cursor whose commit waits for no disk
    flush: ``SET LOCAL synchronous_commit TO OFF`` on PostgreSQL; on SQLite ``synchronous
    = OFF`` for its length, then the connection's own setting again, and a turn at the
    writer (db.sqlite_turn). The counts may lose their last commits in a power cut; the
    database stays consistent, and the next flushed commit (a message's) writes them too.

    Database errors come out as Django's (``wrap_database_errors``), so a broken
    connection is replaced as after any other failed query. Inside a transaction of
    Django's (a test's), a savepoint of it instead.
    """
    sql = _statements.get(db.vendor)
    if sql is None:
        sql = _statements[db.vendor] = _Sql(db.vendor, db.ops.quote_name)
    if db.in_atomic_block:
        with transaction.atomic(using=db.alias), db.cursor() as cursor:
            yield _Qmark(cursor) if db.vendor == "sqlite" else cursor, sql
        return
    turn = sqlite_turn() if db.vendor == "sqlite" else contextlib.nullcontext()
    with turn, db.wrap_database_errors:
        db.ensure_connection()
        cursor = db.connection.cursor()
        level = None
        try:
            if db.vendor == "sqlite":
                level = getattr(db, "_kumosubmit_synchronous", None)
                if level is None or level[0] is not db.connection:
                    (value,) = cursor.execute("PRAGMA synchronous").fetchone()
                    level = db._kumosubmit_synchronous = (db.connection, int(value))
                cursor.execute("PRAGMA synchronous = OFF")
                cursor.execute("BEGIN IMMEDIATE")
            else:
                cursor.execute("BEGIN; SET LOCAL synchronous_commit TO OFF")
            try:
                yield cursor, sql
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
        finally:
            if level is not None:
                cursor.execute(f"PRAGMA synchronous = {level[1]:d}")
            cursor.close()


class _Qmark:
    """A Django cursor given the backend's ``?`` statements (inside a test's transaction)."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.cursor.execute(sql.replace("?", "%s"), params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cursor, name)


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
