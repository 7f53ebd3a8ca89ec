"""Writers of one SQLite file take turns on a lock file, handed on within a millisecond."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest
from django.db import connection

from kumosubmit import db

pytestmark = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="PostgreSQL has no single-writer lock to take turns on"
)


@pytest.fixture
def other_writer(transactional_db):
    """The lock file held as another process would hold it (its own open file)."""
    fd = os.open(f"{connection.settings_dict['NAME']}-writer.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield fd
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def take_turn_in_thread() -> tuple[threading.Thread, list[float]]:
    entered: list[float] = []

    def write() -> None:
        with db.sqlite_turn():
            entered.append(time.monotonic())

    thread = threading.Thread(target=write)
    thread.start()
    return thread, entered


def test_a_writer_waits_for_the_others_turn_and_follows_at_once(other_writer):
    thread, entered = take_turn_in_thread()
    thread.join(0.2)
    assert thread.is_alive() and not entered  # waiting for its turn
    released = time.monotonic()
    fcntl.flock(other_writer, fcntl.LOCK_UN)
    thread.join(5)
    assert entered and entered[0] - released < 0.05


def test_a_turn_never_comes_so_sqlite_decides(other_writer, monkeypatch):
    monkeypatch.setattr(db, "SQLITE_TURN_TIMEOUT", 0.2)
    started = time.monotonic()
    thread, entered = take_turn_in_thread()
    thread.join(5)
    # It waited out the bound, then went ahead: SQLite's own busy timeout has the last word.
    assert entered and 0.2 <= entered[0] - started < 2
