"""The argon2 pool runs below the rest of the process, so an AUTH burst cannot starve sessions."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from kumosubmit.conf import DEFAULTS
from kumosubmit.credentials import hashing
from tests.live import plain_blob, quitting

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"


def test_pool_threads_and_argon2_lanes_run_at_lower_priority(smtp_server, make_login):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, PASSWORD))[0] == 235
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    expected = min(19, base + DEFAULTS["ARGON2_NICENESS"])
    niceness = hashing.pool_thread_niceness()
    assert niceness and set(niceness) == {expected}
    # Threads started from a pool thread (as argon2 starts one per lane) inherit it.
    seen = hashing._executor().submit(
        lambda: (
            ThreadPoolExecutor(1)
            .submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            .result()
        ),
        lane=hashing.BOUNDED,
    )
    assert seen.result() == expected
    # The priority lane's reserved threads run at ARGON2_PRIORITY_NICENESS.
    reserved = min(19, base + DEFAULTS["ARGON2_PRIORITY_NICENESS"])
    assert set(hashing.pool_thread_niceness(reserved=True)) == {reserved}


def test_pool_threads_and_argon2_lanes_run_under_sched_idle(smtp_server, make_login):
    """A session's thread that wakes takes the core from an argon2 thread at once."""
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, PASSWORD))[0] == 235
    policies = hashing.pool_thread_policies()
    assert policies and set(policies) == {os.SCHED_IDLE}
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER  # only the pool
    seen = hashing._executor().submit(
        lambda: ThreadPoolExecutor(1).submit(lambda: os.sched_getscheduler(0)).result(),
        lane=hashing.BOUNDED,
    )
    assert seen.result() == os.SCHED_IDLE  # as argon2's lane threads started from it
    # The priority lane's reserved threads are not under SCHED_IDLE: a known user's
    # verification takes the cores from the bounded lane's, in every process.
    assert set(hashing.pool_thread_policies(reserved=True)) == {os.SCHED_OTHER}


def test_workers_share_the_cores_out(settings):
    cores = os.cpu_count() or 1
    try:
        hashing.share_cores_with(2)
        assert hashing.pool_size() == max(1, cores // 2)
        hashing.share_cores_with(cores * 4)
        assert hashing.pool_size() == 1
        settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "ARGON2_THREADS": 3}
        assert hashing.pool_size() == 3  # the setting wins
    finally:
        hashing.share_cores_with(1)


def _hold_shared_thread(pool):
    """Keep the pool's one shared thread busy until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(10)

    pool.submit(hold, lane=hashing.BOUNDED)
    assert started.wait(10)
    return release


def test_the_shared_threads_serve_both_lanes_in_arrival_order():
    # A steady flow of known pairs must not starve a new client's verification: with only
    # shared threads, jobs run in the order they came, whatever their lane.
    pool = hashing._Pool(shared=1, reserved=0, niceness=0, idle=False)
    release, ran = _hold_shared_thread(pool), []
    lanes = [hashing.BOUNDED, hashing.PRIORITY, hashing.PRIORITY]
    futures = [pool.submit(ran.append, f"{lane}{n}", lane=lane) for n, lane in enumerate(lanes)]
    release.set()
    for future in futures:
        future.result(10)
    assert ran == ["bounded0", "priority1", "priority2"]


def test_a_reserved_thread_takes_the_priority_lane_ahead_of_the_bounded_one():
    pool = hashing._Pool(shared=1, reserved=1, niceness=0, idle=False)
    release, ran = _hold_shared_thread(pool), []
    waiting = pool.submit(ran.append, "bounded", lane=hashing.BOUNDED)
    pool.submit(ran.append, "priority", lane=hashing.PRIORITY).result(10)
    assert ran == ["priority"]  # the reserved thread did not wait for the bounded job
    release.set()
    waiting.result(10)
    assert ran == ["priority", "bounded"]
