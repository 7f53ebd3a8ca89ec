"""Prometheus metrics: every definition, and the one-line hooks the other modules call.

Nothing is measured until :func:`enable` runs (``runsmtpd --metrics-listen``); until
then each hook returns at once, so the listener in the test suite and any process
that never serves metrics pay one ``is None`` test per call.

Metrics use prometheus-client's multiprocess mode, with one code path whether
runsmtpd runs one process or a supervisor and N workers: each process writes its
values to memory-mapped files in a directory made for this run, and the exporter
(:mod:`kumosubmit.exporter`, in the first process) sums them at each scrape.
Counters of a worker that died keep counting towards the totals (a counter never
goes back); its gauges are dropped (:func:`process_exited`). The mode has to be
chosen before the first metric exists, which is why the metrics are made here, in
:func:`enable`, and not when this module is imported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Seconds; the event loop is meant to be held for well under 10 ms.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Seconds; one run_db unit of work (a lookup and its update, storing a message).
DB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds; argon2-cffi's default parameters take tens of milliseconds per verification.
ARGON2_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: Seconds an AUTH attempt waits in its argon2 lane, from admission to its verification's start.
LANE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The argon2 pool's lanes (kumosubmit.credentials.hashing.LANES).
AUTH_LANES = ("priority", "bounded")
#: What a sending-limit refusal is counted under.
SEND_LIMITED_KINDS = ("messages", "recipients", "suspended")

#: The listener kinds a connection is counted under.
LISTENERS = ("starttls", "implicit-tls", "proxy")


@dataclass(frozen=True)
class _Metrics:
    connections: Any
    connections_open: Any
    auth_attempts: Any
    messages: Any
    message_bytes: Any
    replies: Any
    argon2_jobs: Any
    argon2_seconds: Any
    loop_lag: Any
    db_seconds: Any
    db_errors: Any
    worker_restarts: Any
    lane_queue: Any
    lane_wait: Any
    lane_refusals: Any
    spray_active: Any
    send_limited: Any


_m: _Metrics | None = None
_directory: Path | None = None


def enable(directory: Path | None = None) -> Path:
    """Start measuring, in multiprocess mode, into ``directory`` (a new temporary one).

    Call it once, before the worker processes are forked (they inherit it). The
    directory is set as ``PROMETHEUS_MULTIPROC_DIR`` for this process and its
    children; :func:`disable` removes it.
    """
    global _m, _directory
    if _m is not None:
        raise RuntimeError("metrics are already enabled")
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="kumosubmit-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import values

    # prometheus-client picks the value class when it is first imported, from the
    # environment; whoever imported it first (Django's autoreloader, another app)
    # may have done so before the directory existed.
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    _directory = directory
    _m = _make()
    return directory


def disable() -> None:
    """Stop measuring and remove the directory :func:`enable` made (at exit)."""
    global _m, _directory
    if _m is None:
        return
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
    _m = None
    _directory = None


def directory() -> Path | None:
    """Where this run's metrics are kept (None while disabled)."""
    return _directory


def _make() -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    m = _Metrics(
        connections=Counter(
            "kumosubmit_connections",
            "SMTP connections accepted, including those refused with 421 (over a limit).",
            ["listener"],
        ),
        connections_open=Gauge(
            "kumosubmit_connections_open",
            "SMTP connections open now.",
            ["listener"],
            multiprocess_mode="livesum",
        ),
        auth_attempts=Counter(
            "kumosubmit_auth_attempts",
            "AUTH attempts by outcome: success, failure (wrong login or password), "
            "error (454: the check could not be made), aborted (501: malformed or "
            "cancelled), blocked (refused by a brute-force block).",
            ["mechanism", "outcome"],
        ),
        messages=Counter(
            "kumosubmit_messages_accepted", "Messages stored and answered 250 to DATA."
        ),
        message_bytes=Counter(
            "kumosubmit_messages_accepted_bytes",
            "Bytes of the messages accepted, as stored (with the Received header).",
        ),
        replies=Counter(
            "kumosubmit_replies",
            "SMTP replies sent, by code (a multi-line reply counts once).",
            ["code"],
        ),
        argon2_jobs=Gauge(
            "kumosubmit_argon2_jobs",
            "Jobs in the bounded argon2 pool: waiting for a thread, or running.",
            ["state"],
            multiprocess_mode="livesum",
        ),
        argon2_seconds=Histogram(
            "kumosubmit_argon2_seconds",
            "Time one argon2 job took in its thread (verify, make_hash, dummy_hash).",
            ["operation"],
            buckets=ARGON2_BUCKETS,
        ),
        loop_lag=Histogram(
            "kumosubmit_event_loop_lag_seconds",
            "How late the event loop woke a 50 ms timer: how long something held it.",
            buckets=LOOP_LAG_BUCKETS,
        ),
        db_seconds=Histogram(
            "kumosubmit_db_seconds",
            "Time of one run_db unit of work as a session waits for it "
            "(the database thread's queue included), by operation.",
            ["operation"],
            buckets=DB_BUCKETS,
        ),
        db_errors=Counter(
            "kumosubmit_db_errors", "run_db units of work that raised, by operation.", ["operation"]
        ),
        worker_restarts=Counter(
            "kumosubmit_worker_restarts", "Worker processes that died and were restarted."
        ),
        lane_queue=Gauge(
            "kumosubmit_auth_lane_queue",
            "AUTH attempts admitted to an argon2 lane whose verification has not started.",
            ["lane"],
            multiprocess_mode="livesum",
        ),
        lane_wait=Histogram(
            "kumosubmit_auth_lane_wait_seconds",
            "Time from an AUTH attempt's admission to its lane until its argon2 job started "
            "(argon2 jobs without an attempt: from submission).",
            ["lane"],
            buckets=LANE_WAIT_BUCKETS,
        ),
        lane_refusals=Counter(
            "kumosubmit_auth_lane_refusals",
            "AUTH attempts answered 454 at once because their lane's queue was full.",
            ["lane"],
        ),
        spray_active=Gauge(
            "kumosubmit_auth_spray_active",
            "1 while a password spray is seen (the bounded lane is tightened site-wide).",
            multiprocess_mode="livemax",
        ),
        send_limited=Counter(
            "kumosubmit_send_limited",
            "Commands refused with 451 4.7.1 by the sending limits, by kind: messages "
            "(at MAIL FROM), recipients (at MAIL FROM or RCPT TO), suspended (a login "
            "suspended for its rate).",
            ["kind"],
        ),
    )
    # Series that exist from the start, so a rate() has a zero to start from.
    for listener in LISTENERS:
        m.connections.labels(listener)
        m.connections_open.labels(listener)
    for state in ("waiting", "running"):
        m.argon2_jobs.labels(state)
    for lane in AUTH_LANES:
        m.lane_queue.labels(lane)
        m.lane_wait.labels(lane)
        m.lane_refusals.labels(lane)
    for kind in SEND_LIMITED_KINDS:
        m.send_limited.labels(kind)
    return m


# -- hooks: one line at each call site -------------------------------------------------


def connection_opened(listener: str, *, proxy: bool) -> None:
    if _m is not None:
        kind = "proxy" if proxy else listener
        _m.connections.labels(kind).inc()
        _m.connections_open.labels(kind).inc()


def connection_closed(listener: str, *, proxy: bool) -> None:
    if _m is not None:
        _m.connections_open.labels("proxy" if proxy else listener).dec()


def auth_attempt(mechanism: str, outcome: str) -> None:
    if _m is not None:
        _m.auth_attempts.labels(mechanism, outcome).inc()


def send_limited(kind: str) -> None:
    if _m is not None:
        _m.send_limited.labels(kind).inc()


def message_accepted(size: int) -> None:
    if _m is not None:
        _m.messages.inc()
        _m.message_bytes.inc(size)


def reply_sent(line: str | bytes) -> None:
    """Count a reply line that is the last (or only) line of its reply."""
    if _m is None:
        return
    head = line[:4].decode("ascii", "replace") if isinstance(line, bytes) else line[:4]
    if head[3:4] == "-":  # "250-PIPELINING": more lines follow
        return
    code = head[:3]
    _m.replies.labels(code if code.isdigit() and len(code) == 3 else "other").inc()


def loop_lag(seconds: float) -> None:
    if _m is not None:
        _m.loop_lag.observe(seconds)


def db_call(func: Callable[..., Any], seconds: float, *, failed: bool) -> None:
    if _m is None:
        return
    operation = operation_name(func)
    _m.db_seconds.labels(operation).observe(seconds)
    if failed:
        _m.db_errors.labels(operation).inc()


def operation_name(func: Callable[..., Any]) -> str:
    """``load_policy``, ``store_waiting``, ``ConnectionRecord.save``: a bounded label."""
    owner = getattr(func, "__self__", None)
    name = getattr(func, "__name__", type(func).__name__)
    if owner is not None and not isinstance(owner, type):
        return f"{type(owner).__name__}.{name}"
    return str(getattr(func, "__qualname__", name))


def lane_queue(lane: str, queued: int) -> None:
    """``queued`` attempts now wait in ``lane`` of this process's argon2 pool."""
    if _m is not None:
        _m.lane_queue.labels(lane).set(queued)


def lane_started(lane: str, waited: float, queued: int) -> None:
    """A job of ``lane`` started after ``waited`` seconds; ``queued`` attempts still wait."""
    if _m is not None:
        _m.lane_wait.labels(lane).observe(waited)
        _m.lane_queue.labels(lane).set(queued)


def lane_refused(lane: str) -> None:
    if _m is not None:
        _m.lane_refusals.labels(lane).inc()


def spray_active(active: bool) -> None:
    if _m is not None:
        _m.spray_active.set(1 if active else 0)


def worker_restarted() -> None:
    if _m is not None:
        _m.worker_restarts.inc()


def process_exited(pid: int) -> None:
    """Drop the gauges of a process that has exited (its counters keep counting)."""
    if _m is not None and _directory is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(_directory))


class PoolJob:
    """A function to run in the argon2 pool, counted while it waits and runs, and timed.

    Submit the job itself (``executor.submit(job, *args)``) and pass
    :meth:`done` to the future's ``add_done_callback``: a job cancelled before a
    thread took it (its client hung up) never runs, and must stop counting as waiting.
    """

    __slots__ = ("func", "started")

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.started = False
        if _m is not None:
            _m.argon2_jobs.labels("waiting").inc()

    def __call__(self, *args: Any) -> Any:
        self.started = True
        if _m is None:
            return self.func(*args)
        m = _m
        m.argon2_jobs.labels("waiting").dec()
        m.argon2_jobs.labels("running").inc()
        began = time.perf_counter()
        try:
            return self.func(*args)
        finally:
            m.argon2_seconds.labels(self.func.__name__).observe(time.perf_counter() - began)
            m.argon2_jobs.labels("running").dec()

    def done(self, future: Future[Any]) -> None:
        if future.cancelled() and not self.started and _m is not None:
            _m.argon2_jobs.labels("waiting").dec()
