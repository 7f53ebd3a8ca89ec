"""Running N listener processes that share the listening sockets, as a pre-fork server.

The parent binds the sockets once (so a busy port is one error, before any worker
starts), forks the workers, restarts one that dies, and on SIGTERM or SIGINT stops
listening at once and tells every worker to drain. Workers accept from the same
sockets, so a connection waiting in the backlog of a worker that died is taken by
another rather than lost (SO_REUSEPORT would give each worker its own backlog).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from kumosubmit import metrics

log = logging.getLogger("kumosubmit.supervisor")

PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

#: A worker that exits sooner than this after its start counts as a crash loop.
QUICK_EXIT = 2.0
#: The longest pause between restarts of a worker that keeps crashing.
MAX_BACKOFF = 30.0


class Supervisor:
    """Keeps ``count`` worker processes running ``target(index)`` until told to stop."""

    def __init__(
        self,
        target: Callable[[int], None],
        count: int,
        *,
        grace: float,
        on_start: Callable[[], None] = lambda: None,
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.target = target
        self.count = count
        self.grace = grace
        self.on_start = on_start  # runs once the signal handlers are in place
        self.on_stop = on_stop  # runs once on SIGTERM/SIGINT, e.g. to close the listeners
        self.workers: dict[int, multiprocessing.Process] = {}
        self._started: dict[int, float] = {}
        self._quick_exits: dict[int, int] = {}
        self._context = multiprocessing.get_context("fork")
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()

    def run(self) -> int:
        """Run until SIGTERM or SIGINT, then drain the workers; return the exit status."""
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        self._wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno())
        try:
            self.on_start()
            for index in range(self.count):
                if self._stopping:
                    break
                self._spawn(index)
            while not self._stopping:
                self._watch(timeout=None)
            return self._drain()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._wake_r.close()
            self._wake_w.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self._stopping:
            self._stopping = True
            self.on_stop()
            for process in self.workers.values():
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)

    def _spawn(self, index: int) -> None:
        process = self._context.Process(
            target=_worker_main,
            args=(self.target, index, os.getpid()),
            name=f"kumosubmit-worker-{index}",
        )
        # A stop signal that comes while forking waits until the new worker is on the list
        # the handler signals (and the child sets its own handlers before it sees one).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
            self.workers[index] = process
            self._started[index] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        log.info("worker %d started (pid %d)", index, process.pid)

    def _watch(self, timeout: float | None) -> None:
        sentinels = {p.sentinel: i for i, p in self.workers.items()}
        ready = wait([*sentinels, self._wake_r], timeout)
        if self._wake_r in ready:
            self._wake_r.recv(4096)  # the signal handler has already run
        for sentinel in ready:
            if sentinel in sentinels and not self._stopping:
                self._restart(sentinels[sentinel])

    def _restart(self, index: int) -> None:
        process = self.workers[index]
        process.join()
        metrics.process_exited(process.pid or 0)  # its gauges go; its counters still count
        metrics.worker_restarted()
        lived = time.monotonic() - self._started[index]
        quick = self._quick_exits.get(index, 0) + 1 if lived < QUICK_EXIT else 0
        self._quick_exits[index] = quick
        log.error(
            "worker %d (pid %d) exited with status %s after %.1fs; restarting",
            index,
            process.pid,
            process.exitcode,
            lived,
        )
        if quick:
            pause = min(MAX_BACKOFF, 0.5 * 2 ** (quick - 1))
            wait([self._wake_r], pause)  # a signal ends the pause early
            if self._stopping:
                return
        self._spawn(index)

    def _drain(self) -> int:
        deadline = time.monotonic() + self.grace + 10
        for index, process in self.workers.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker %d (pid %d) did not stop in time; killing it", index, process.pid)
                process.kill()
                process.join()
            metrics.process_exited(process.pid or 0)
        return 0


def _die_with_parent(parent: int) -> None:
    """Linux: if the supervisor is killed (kill -9), its workers are killed too."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: a service manager's cgroup does this
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(target: Callable[[int], None], index: int, parent: int) -> None:
    _die_with_parent(parent)
    # The parent's handlers and wakeup fd are not the worker's: it installs its own. Until
    # then a stop signal ends it at once (it serves nobody yet); one that came during the
    # fork was blocked and is delivered now.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    target(index)
