"""Running ORM work from the event loop.

Each call runs one whole unit of work (a lookup and its update) in Django's
sync thread, so the loop never waits on the database and a session costs one
thread hop, not one per query. ``close_old_connections`` gives a long-lived
process what Django does around each request: a dropped or expired
connection is replaced instead of failing every later query.

How soon a dead connection (a database restart, a failover, a cut network
path) is noticed depends on ``CONN_HEALTH_CHECKS``: with it (the project's
default) Django pings a kept connection before the first query of each unit of
work and reconnects, so no client notices; without it, the one unit of work
that meets the dead connection fails (the client gets 451 or 454, and may
retry) and marks it, and the next unit gets a new connection. While the
database cannot be reached at all, every unit fails at once with
``OperationalError``, and work resumes by itself when it is back.

A locked table must mean an error too, not silence: SQLite gives up after its
busy timeout (5 s unless ``OPTIONS["timeout"]`` says otherwise), but PostgreSQL
waits for a lock for ever, and the client would hear nothing until it gave up
(and then send the message again). So the connections this module's work opens
on PostgreSQL get ``lock_timeout`` and ``statement_timeout`` (below) unless the
operator set them (``OPTIONS: {"options": "-c lock_timeout=..."}``). A network
path that goes silent (no reset) is for libpq's ``connect_timeout``,
``keepalives_*`` and ``tcp_user_timeout`` in ``OPTIONS``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.dispatch import receiver

from kumosubmit import metrics

P = ParamSpec("P")
R = TypeVar("R")

#: How long run_db work waits for a PostgreSQL lock: SQLite's default busy timeout.
LOCK_TIMEOUT_MS = 5_000
#: The longest one of its statements may run (storing the largest message takes well under).
STATEMENT_TIMEOUT_MS = 30_000

_state = threading.local()


@receiver(connection_created, dispatch_uid="kumosubmit.db.bound_waits")
def _bound_waits(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Give a PostgreSQL connection opened by run_db work bounded waits (see above)."""
    if not getattr(_state, "in_run_db", False) or connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        # An operator's own value (anything but 0, "no limit") is kept.
        cursor.execute(
            "SELECT set_config(name, %s, false) FROM pg_settings"
            " WHERE name = 'lock_timeout' AND setting = '0'"
            " UNION ALL "
            "SELECT set_config(name, %s, false) FROM pg_settings"
            " WHERE name = 'statement_timeout' AND setting = '0'",
            [str(LOCK_TIMEOUT_MS), str(STATEMENT_TIMEOUT_MS)],
        )


def _fresh(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    _state.in_run_db = True
    try:
        close_old_connections()
        return func(*args, **kwargs)
    finally:
        _state.in_run_db = False


#: ``_fresh`` in Django's sync thread; made once, as a decorator would, not per call.
_fresh_in_sync_thread = sync_to_async(_fresh, thread_sensitive=True)


async def run_db(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``func(*args, **kwargs)`` against the database, off the event loop."""
    began = time.perf_counter()
    try:
        result = await _fresh_in_sync_thread(func, *args, **kwargs)
    except Exception:
        metrics.db_call(func, time.perf_counter() - began, failed=True)
        raise
    metrics.db_call(func, time.perf_counter() - began, failed=False)
    return result


def ping() -> None:
    """``SELECT 1`` on a new connection, closed again; raises if the database is unusable.

    For health checks, from a thread of their own (never the event loop's): a new
    connection each time proves what a restarted worker or a reconnect needs (the
    server answers, accepts our credentials, the SQLite file opens), and nothing
    is kept open in a supervisor that forks workers.
    """
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        with contextlib.suppress(Exception):  # a broken connection may fail to close too
            connection.close()


#: How long a writer waits for its turn at a SQLite file before the write fails.
SQLITE_TURN_TIMEOUT = 5.0
_turn_files: dict[str, int] = {}


@contextlib.contextmanager
def sqlite_turn() -> Iterator[None]:
    """Take turns with the other processes writing to this SQLite file; else nothing.

    SQLite lets one writer in at a time, and one that finds the file locked
    sleeps and retries (1, 2, 5, 10... ms): with two listener processes writing
    messages, most commits would wait for a sleep to end rather than for the
    other's commit. Writers here take turns on a lock file beside the database
    (``flock``), looked at every 100 µs for the first 10 ms (a commit holds it for
    well under a millisecond) and every millisecond after, so a turn passes on
    within about 100 µs. The wait is bounded as SQLite's own is; after it, SQLite decides.
    """
    if connection.vendor != "sqlite" or not _on_disk(connection.settings_dict["NAME"]):
        yield
        return
    path = f"{connection.settings_dict['NAME']}-writer.lock"
    fd = _turn_files.get(path)
    if fd is None:
        fd = _turn_files[path] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    started = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            waited = time.monotonic() - started
            if waited > SQLITE_TURN_TIMEOUT:
                break  # go ahead: SQLite's own busy timeout decides
            # A commit holds the turn for well under a millisecond: look often at first.
            time.sleep(0.0001 if waited < 0.01 else 0.001)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _on_disk(name: Any) -> bool:
    text = str(name)
    return bool(text) and text != ":memory:" and "mode=memory" not in text


async def close_db() -> None:
    """Close the connections of the database thread (at shutdown)."""
    await sync_to_async(connections.close_all, thread_sensitive=True)()


def storable(value: Any) -> Any:
    """``value`` with every string (dict keys too) made storable in any database.

    Clients choose much of what is stored (the EHLO name, addresses, whatever a
    hook copied into conn_meta). PostgreSQL refuses a NUL character in text and
    in jsonb, and jsonb refuses a lone surrogate; one such character from a
    client would fail the whole row (no audit record, 451 for every message).
    Both become U+FFFD. Lists, tuples and dicts are copied; other values are
    returned as they are.
    """
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            value = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
        return value
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value
