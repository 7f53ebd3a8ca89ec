"""The relay worker: claims due messages and delivers them over a pool of connections.

One asyncio task claims batches (queue.py) and hands them to ``workers``
delivery lanes, each with its own upstream connection, reused from message to
message. Outcomes are written by one recorder task, many per transaction
(SQLite pays one fsync per commit). A heartbeat renews the leases. ORM work
runs off the event loop through ``kumosubmit.db.run_db``.

The same worker runs in ``runrelay`` (its own loop) and in ``runsmtpd``'s loop
for hand-off mode (handoff.py), which wakes it after each stored message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import socket
from datetime import datetime

from django.utils import timezone

from kumosubmit.db import run_db
from kumosubmit.relay import queue, retention
from kumosubmit.relay.client import Attempt, Outcome, UpstreamConnection, Verdict
from kumosubmit.relay.config import RelayConfig

log = logging.getLogger("kumosubmit.relay")

#: Seconds an unused upstream connection stays open before QUIT.
IDLE_CONNECTION = 5.0
#: Outcomes written per transaction at most.
RECORD_BATCH = 200
#: Seconds between retention sweeps in a long-running worker.
RETENTION_INTERVAL = 3600.0
#: Seconds between retries of a failing database write.
DB_RETRY = 1.0
#: Messages claimed per connection at most (the one being sent and those waiting).
CLAIM_AHEAD = 4


def worker_name() -> str:
    """An id for this worker that says where it runs: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class RelayWorker:
    """Delivers due messages to the upstream until stopped (or, once, until none is due)."""

    def __init__(self, config: RelayConfig, *, name: str | None = None) -> None:
        self.config = config
        self.name = name or worker_name()
        self.stats: collections.Counter[str] = collections.Counter()
        self._tls_context = config.tls_context()
        self._wake = asyncio.Event()
        self._stopping = False
        self._in_flight = 0
        # What claims take (runrelay --once: only what was due when the pass began).
        self._cutoff: datetime | None = None
        self._new_only = False
        self._claimed_in_pass = False
        #: Seconds deliveries in progress may take to finish once stopped.
        self.shutdown_timeout = 30.0

    def wake(self) -> None:
        """Look for due messages now (call from the worker's event loop)."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; ``run`` returns once deliveries in progress have finished.

        Those still going after ``timeout`` seconds are cut off and given back.
        """
        if timeout is not None:
            self.shutdown_timeout = timeout
        self._stopping = True
        self._wake.set()

    async def run(self, *, once: bool = False) -> dict[str, int]:
        """Deliver until ``stop()`` (or with ``once``, until nothing due is left).

        Returns counts of messages by what happened to them.
        """
        work: asyncio.Queue[queue.Claimed | None] = asyncio.Queue()
        results: asyncio.Queue[tuple[queue.Claimed, Attempt] | None] = asyncio.Queue()
        lanes = [
            asyncio.create_task(self._lane(work, results), name=f"relay-lane-{n}")
            for n in range(self.config.workers)
        ]
        recorder = asyncio.create_task(self._recorder(work, results), name="relay-recorder")
        helpers = [asyncio.create_task(self._heartbeat(), name="relay-heartbeat")]
        if not once and self.config.retention is not None:
            helpers.append(asyncio.create_task(self._retention(), name="relay-retention"))
        try:
            await self._claim(work, once)
        finally:
            await self._shut_down(work, results, lanes, recorder, self.shutdown_timeout)
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        return dict(self.stats)

    # -- claiming ----------------------------------------------------------------------

    def _room(self, finishing: int = 0) -> int:
        """How many messages to claim now (0: not worth a claim yet).

        At most CLAIM_AHEAD per connection are held: the one being sent and a few
        waiting. A claim is made once a connection's worth of room is free (or a
        connection would idle), so each claim (a commit, an fsync on SQLite) takes
        several messages, while a worker that dies holds only a few.
        """
        workers = self.config.workers
        in_flight = self._in_flight - finishing
        room = CLAIM_AHEAD * workers - in_flight
        return room if room >= workers or (room > 0 and in_flight < workers) else 0

    def _take(
        self, work: asyncio.Queue[queue.Claimed | None], claimed: list[queue.Claimed]
    ) -> None:
        for message in claimed:
            if message.reclaimed_from:
                log.warning(
                    "relay %s: lease of %s ran out; delivering it again",
                    message.queue_id,
                    message.reclaimed_from,
                )
            self._in_flight += 1
            work.put_nowait(message)
        self._claimed_in_pass = self._claimed_in_pass or bool(claimed)

    async def _claim(self, work: asyncio.Queue[queue.Claimed | None], once: bool) -> None:
        """Claim when there is room and something is due; in ``once`` mode, end when done."""
        config = self.config
        self._cutoff = timezone.now() if once else None
        while not self._stopping:
            self._wake.clear()
            room = self._room()
            claimed: list[queue.Claimed] = []
            if room:
                try:
                    claimed = await run_db(
                        queue.claim,
                        self.name,
                        room,
                        config.lease,
                        cutoff=self._cutoff,
                        new_only=self._new_only,
                    )
                except Exception:
                    if once:
                        raise
                    log.exception("relay: could not claim messages; trying again")
                    await self._sleep(max(config.poll_interval, DB_RETRY))
                    continue
            self._take(work, claimed)
            if claimed and len(claimed) == room:
                continue  # more may be due: claim again as soon as there is room
            if once and not claimed and self._in_flight == 0:
                if not self._claimed_in_pass:
                    return
                # What arrived during the pass (new mail, our DSNs) is due too; retries are not.
                self._cutoff, self._new_only, self._claimed_in_pass = timezone.now(), True, False
                continue
            await self._sleep(config.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        """Wait for ``seconds`` or until woken (new mail, room in the lanes, stop)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # -- delivering --------------------------------------------------------------------

    async def _lane(
        self,
        work: asyncio.Queue[queue.Claimed | None],
        results: asyncio.Queue[tuple[queue.Claimed, Attempt] | None],
    ) -> None:
        connection = UpstreamConnection(self.config, self._tls_context)
        try:
            while True:
                try:
                    if connection.is_open:
                        message = await asyncio.wait_for(work.get(), IDLE_CONNECTION)
                    else:
                        message = await work.get()
                except TimeoutError:
                    await connection.close()
                    continue
                if message is None:
                    return
                try:
                    attempt = await self._deliver(connection, message)
                except Exception as error:  # a bug must not strand the message in flight
                    log.exception("relay %s: delivery failed unexpectedly", message.queue_id)
                    connection.abort()
                    outcome = Outcome(Verdict.DEFERRED, f"internal error: {error!r}", "4.3.0")
                    attempt = Attempt({index: outcome for index, _ in message.pending})
                results.put_nowait((message, attempt))
        finally:
            await asyncio.shield(connection.close())

    async def _deliver(self, connection: UpstreamConnection, message: queue.Claimed) -> Attempt:
        content = message.content
        if content is None:
            try:
                content = await run_db(queue.content_of, message.pk)
            except Exception as error:
                log.exception("relay %s: could not read the content", message.queue_id)
                outcome = Outcome(Verdict.DEFERRED, f"database error: {error}", "4.3.0")
                return Attempt({index: outcome for index, _ in message.pending})
            if content is None:  # deleted in the admin meanwhile
                return Attempt()
        if not message.pending:  # nothing left to do (an admin retry of a finished message)
            return Attempt()
        return await connection.deliver(message.mail_from, message.pending, content)

    # -- recording ---------------------------------------------------------------------

    async def _recorder(
        self,
        work: asyncio.Queue[queue.Claimed | None],
        results: asyncio.Queue[tuple[queue.Claimed, Attempt] | None],
    ) -> None:
        """Write outcomes in batches, claiming replacements in the same transaction."""
        batch: list[tuple[queue.Claimed, Attempt]] = []
        finished = False
        while not finished or batch:
            if not finished and not batch:
                item = await results.get()
                if item is None:
                    finished = True
                else:
                    batch.append(item)
            while not finished and len(batch) < RECORD_BATCH and not results.empty():
                item = results.get_nowait()
                if item is None:
                    finished = True
                else:
                    batch.append(item)
            if not batch:
                continue
            try:
                recorded, claimed = await run_db(
                    queue.record,
                    batch,
                    self.name,
                    self.config,
                    claim_limit=0 if self._stopping else self._room(finishing=len(batch)),
                    cutoff=self._cutoff,
                    new_only=self._new_only,
                )
            except Exception:
                # The messages keep our leases (renewed), so nobody else sends them meanwhile.
                log.exception("relay: could not record %d outcome(s); trying again", len(batch))
                if finished:
                    return  # stopping: the leases run out and the messages are sent again
                await asyncio.sleep(DB_RETRY)
                continue
            self._in_flight -= len(batch)
            batch = []
            self._take(work, claimed)
            for done in recorded:
                self._log(done)
            self._wake.set()  # room for more, or (--once) perhaps the end

    def _log(self, done: queue.Recorded) -> None:
        self.stats[done.state] += 1
        if done.dsn_queue_id:
            self.stats["dsn"] += 1
        if done.state == "delivered" and not done.detail:
            log.info("relay %s: delivered to %s", done.queue_id, self.config.upstream)
            return
        extra = ""
        if done.next_attempt_at is not None:
            wait = (done.next_attempt_at - timezone.now()).total_seconds()
            extra = f"; next attempt in {max(wait, 0):.0f} s"
        if done.dsn_queue_id:
            extra += f"; DSN {done.dsn_queue_id} queued to the sender"
        log.info("relay %s: %s (%s)%s", done.queue_id, done.state, done.detail, extra)

    # -- leases and housekeeping -------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Renew our leases every third of a lease, so only a dead worker's run out."""
        while True:
            await asyncio.sleep(self.config.lease / 3)
            try:
                await run_db(queue.renew, self.name, self.config.lease)
            except Exception:
                log.exception("relay: could not renew leases")

    async def _retention(self) -> None:
        """Remove expired delivered content at start and every RETENTION_INTERVAL.

        One batch per database call, so that a large backlog never holds up the
        claims, outcomes and lease renewals queued behind it.
        """
        assert self.config.retention is not None
        while True:
            removed = 0
            try:
                while True:
                    batch = await run_db(
                        retention.remove_expired_content,
                        self.config.retention,
                        limit=retention.BATCH,
                    )
                    removed += batch
                    if batch < retention.BATCH:
                        break
            except Exception:
                log.exception("relay: could not remove expired content")
            if removed:
                log.info("relay: removed the content of %d delivered message(s)", removed)
            await asyncio.sleep(RETENTION_INTERVAL)

    async def _shut_down(
        self,
        work: asyncio.Queue[queue.Claimed | None],
        results: asyncio.Queue[tuple[queue.Claimed, Attempt] | None],
        lanes: list[asyncio.Task[None]],
        recorder: asyncio.Task[None],
        grace: float,
    ) -> None:
        """Finish deliveries in progress (up to ``grace`` seconds); give back the rest."""
        while not work.empty():  # not started: given back below
            if work.get_nowait() is not None:
                self._in_flight -= 1
        for _ in lanes:
            work.put_nowait(None)
        _, late = await asyncio.wait(lanes, timeout=grace)
        for lane in late:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        results.put_nowait(None)
        await recorder
        try:
            # The never-started ones, and any cut off mid-delivery: due again now.
            released = await run_db(queue.release, self.name)
        except Exception:
            log.exception("relay: could not give back the messages not delivered")
        else:
            if released:
                log.info("relay: gave back %d message(s) to the queue", released)
