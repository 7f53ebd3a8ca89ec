"""argon2id hashing with argon2-cffi, kept off the event loop.

Hashes are standard PHC strings (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``),
the format Dovecot, Postfix tooling and argon2 CLIs share. argon2 releases the
GIL, so a thread pool sized to the cores runs verifications truly in parallel
while the event loop keeps serving other sessions.

The pool has two lanes (:class:`_Pool`): the priority lane, for the AUTH attempts of
a known login and network, served first and by threads of its own; and the bounded
lane, for every other attempt, whose queue length and wait the policy layer bounds
(:func:`admit`; kumosubmit/policy/lanes.py decides the lane, before any password is
looked at). Work outside an admitted attempt runs in the priority lane.

Logins imported from Dovecot (``importsmtpusers``) keep their old hash until
their first good login, which replaces it with argon2id. argon2i/argon2id PHC
strings are stored as they are (argon2-cffi verifies both); the crypt schemes
are stored tagged as Dovecot writes them (``{BLF-CRYPT}$2y$...``,
``{SHA512-CRYPT}$6$...``, ``{SHA256-CRYPT}$5$...``) and verified with pyca's
``bcrypt`` and libpass (the maintained fork of passlib, pure Python, so no
dependence on the platform's ``crypt()``, which Python 3.13 removed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import os
import re
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from django.views.decorators.debug import sensitive_variables
from passlib.handlers.sha2_crypt import sha256_crypt, sha512_crypt

from kumosubmit import metrics
from kumosubmit.conf import app_settings, clears_on_setting_change
from kumosubmit.credentials import argon2_memory

R = TypeVar("R")


@clears_on_setting_change
@functools.cache
def hasher() -> argon2.PasswordHasher:
    """The hasher for new hashes, with the configured parameters."""
    return argon2.PasswordHasher(type=argon2.Type.ID, **app_settings.ARGON2)


@clears_on_setting_change
@functools.cache
def dummy_hash() -> str:
    """A hash of nothing anyone knows, with current parameters.

    Verifying against it makes an unknown or disabled login cost the same time
    as a wrong password for a real one (Django ticket #20760).
    """
    return hasher().hash(secrets.token_urlsafe(32))


#: Processes sharing this machine's cores for argon2 (runsmtpd --workers), see pool_size().
_processes = 1


def share_cores_with(processes: int) -> None:
    """Size each process's pool so that ``processes`` of them together fill the cores.

    argon2 is memory-hard: more verifications at once than cores only make each
    slower (and thrash the caches), so N workers get cores/N threads each,
    unless ``ARGON2_THREADS`` says otherwise. Call before the pool is first used.
    """
    global _processes
    _processes = max(1, processes)


def pool_size() -> int:
    """Threads in this process's argon2 pool."""
    if app_settings.ARGON2_THREADS:
        return int(app_settings.ARGON2_THREADS)
    return max(1, (os.cpu_count() or 1) // _processes)


#: The lanes of the argon2 pool (kumosubmit/policy/lanes.py decides which an AUTH takes).
#: PRIORITY: pairs of login and network seen to succeed; never refused, served first.
PRIORITY = "priority"
#: BOUNDED: everything else; a queue of bounded length, served when no priority job waits.
BOUNDED = "bounded"
LANES = (PRIORITY, BOUNDED)


@dataclass
class Ticket:
    """A place in one lane's queue, taken before the password is looked at (:func:`admit`).

    It counts towards the lane's queue length from :func:`admit` until its first job
    starts in a thread (or until :func:`leave`, if no job ever ran): an attempt that
    is still reading its login from the database holds its place, so a full lane is
    refused before any work is done. Later jobs of the same attempt (a rehash after a
    good password) run in the same lane without counting again.
    """

    lane: str
    #: Seconds the attempt may wait for its first job to start; then ``expired()`` is
    #: raised instead, and the job never runs (None: it waits as long as it takes).
    max_wait: float | None = None
    expired: Callable[[], BaseException] | None = None
    admitted_at: float = field(default_factory=time.monotonic)
    held: bool = True
    closed: bool = False


#: The ticket of the AUTH attempt this task is working on (set by the lanes policy).
_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "kumosubmit_argon2_ticket", default=None
)


class _Pool:
    """The bounded argon2 pool: a priority lane and a bounded lane, served by threads.

    ``shared`` threads take the jobs of both lanes in the order they came (leaving a
    priority job to an idle reserved thread), so a steady flow of known pairs cannot
    starve a new client's verification in the bounded lane; they run at the configured
    niceness and under SCHED_IDLE. ``reserved`` threads take
    priority jobs only, at ``ARGON2_PRIORITY_NICENESS`` and not under SCHED_IDLE, so a
    known user's verification starts at once however long the bounded lane is, and
    takes the cores from the bounded lane's verifications (SCHED_IDLE threads get the
    CPU only when nothing else wants it, in every process on the host), and from the
    work the attackers' connections cause, not the other way round. A priority job
    goes to an idle reserved thread when there is one.
    """

    def __init__(
        self, shared: int, reserved: int, niceness: int, idle: bool, reserved_niceness: int = 0
    ) -> None:
        self._lock = threading.Lock()
        self._shared_wake = threading.Condition(self._lock)
        self._reserved_wake = threading.Condition(self._lock)
        self._queues: dict[str, collections.deque[_Job]] = {
            lane: collections.deque() for lane in LANES
        }
        #: Tickets admitted whose first job has not started, per lane: the queue length.
        self._held = dict.fromkeys(LANES, 0)
        self._idle_reserved = 0
        self.refused = dict.fromkeys(LANES, 0)
        self.started = dict.fromkeys(LANES, 0)
        self.verifications = dict.fromkeys(LANES, 0)
        self._threads = [
            threading.Thread(
                target=self._serve,
                args=(False, niceness, idle),
                name=f"kumosubmit-argon2_{n}",
                daemon=True,
            )
            for n in range(shared)
        ] + [
            threading.Thread(
                target=self._serve,
                args=(True, reserved_niceness, False),
                name=f"kumosubmit-argon2-priority_{n}",
                daemon=True,
            )
            for n in range(reserved)
        ]
        for thread in self._threads:
            thread.start()

    # -- the event loop's side ----------------------------------------------------------

    def admit(
        self,
        lane: str,
        limit: int | None,
        max_wait: float | None = None,
        expired: Callable[[], BaseException] | None = None,
    ) -> Ticket | None:
        """A place in ``lane``'s queue, or None when ``limit`` places are taken."""
        with self._lock:
            if limit is not None and self._held[lane] >= limit:
                self.refused[lane] += 1
                return None
            self._held[lane] += 1
            queued = self._held[lane]
        metrics.lane_queue(lane, queued)
        return Ticket(lane, max_wait, expired)

    def expire(self, ticket: Ticket) -> None:
        """An attempt that waited too long is refused: counted as its lane's refusal."""
        with self._lock:
            self.refused[ticket.lane] += 1

    def leave(self, ticket: Ticket) -> None:
        """The attempt is over: a place it still holds (no job of it ran) is given back."""
        with self._lock:
            ticket.closed = True
            if not ticket.held:
                return
            ticket.held = False
            self._held[ticket.lane] -= 1
            queued = self._held[ticket.lane]
        metrics.lane_queue(ticket.lane, queued)

    def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        lane: str = PRIORITY,
        ticket: Ticket | None = None,
    ) -> Future[Any]:
        """Run ``func(*args)`` in ``lane`` (``ticket``'s, if given); its future."""
        job = _Job(func, args, ticket.lane if ticket else lane, ticket)
        with self._lock:
            self._queues[job.lane].append(job)
            if job.lane == PRIORITY and self._idle_reserved:
                self._reserved_wake.notify()
            else:
                self._shared_wake.notify()
        return job.future

    def queue_lengths(self) -> dict[str, int]:
        """Per lane, the attempts admitted whose verification has not started."""
        with self._lock:
            return dict(self._held)

    # -- the threads' side --------------------------------------------------------------

    def _take(self, reserved: bool) -> _Job:
        """The next job for this thread (waits for one); called with the lock held."""
        priority, bounded = self._queues[PRIORITY], self._queues[BOUNDED]
        while True:
            if reserved:
                if priority:
                    return priority.popleft()
            else:
                # Both lanes in the order their jobs came: a steady flow of known pairs
                # must not starve a new client in the bounded lane (it would wait out
                # MAX_WAIT and get 454). The known pairs have the reserved threads besides;
                # a priority job an idle one is about to take is left to it.
                if priority and not self._idle_reserved:
                    if not bounded or priority[0].submitted_at <= bounded[0].submitted_at:
                        return priority.popleft()
                if bounded:
                    return bounded.popleft()
            if reserved:
                self._idle_reserved += 1
                self._reserved_wake.wait()
                self._idle_reserved -= 1
            else:
                # A reserved thread that was idle may have left a priority job for us
                # to take once it got busy: look again now and then.
                self._shared_wake.wait(0.05 if priority else None)

    def _serve(self, reserved: bool, niceness: int, idle: bool) -> None:
        _lower_priority(niceness, idle)
        while True:
            with self._lock:
                job = self._take(reserved)
                if not job.future.set_running_or_notify_cancel():
                    # Cancelled while it waited (its client went away): its place is free.
                    if job.ticket is not None and job.ticket.held:
                        job.ticket.held = False
                        self._held[job.lane] -= 1
                    continue
                ticket, waited = job.ticket, time.monotonic() - job.submitted_at
                if ticket is not None and ticket.held:
                    ticket.held = False
                    self._held[ticket.lane] -= 1
                    waited = time.monotonic() - ticket.admitted_at
                self.started[job.lane] += 1
                if getattr(job.func, "func", job.func) is verify:
                    self.verifications[job.lane] += 1
                queued = self._held[job.lane]
            metrics.lane_started(job.lane, waited, queued)
            try:
                job.future.set_result(job.func(*job.args))
            except BaseException as error:  # handed to the waiting session
                job.future.set_exception(error)


@dataclass
class _Job:
    func: Callable[..., Any]
    args: tuple[Any, ...]
    lane: str
    ticket: Ticket | None
    future: Future[Any] = field(default_factory=Future)
    submitted_at: float = field(default_factory=time.monotonic)


@functools.cache
def _executor() -> _Pool:
    return _Pool(
        shared=pool_size(),
        reserved=max(0, int(app_settings.ARGON2_PRIORITY_THREADS)),
        niceness=app_settings.ARGON2_NICENESS,
        idle=app_settings.ARGON2_SCHED_IDLE,
        reserved_niceness=app_settings.ARGON2_PRIORITY_NICENESS,
    )


def admit(
    lane: str,
    limit: int | None = None,
    *,
    max_wait: float | None = None,
    expired: Callable[[], BaseException] | None = None,
) -> Ticket | None:
    """Take a place in ``lane``'s queue for the current AUTH attempt, before any work.

    None when ``limit`` attempts already wait in that lane: refuse the attempt.
    With ``max_wait``, a verification of the attempt that has not started that many
    seconds after admission is dropped unstarted, and ``expired()`` is raised in its
    place (the policy layer gives its refusal). Pass the ticket to :func:`enter`, and to
    :func:`leave` when the attempt is over.
    """
    return _executor().admit(lane, limit, max_wait, expired)


def enter(ticket: Ticket) -> None:
    """The argon2 work of this task (this AUTH attempt) runs in ``ticket``'s lane."""
    _ticket.set(ticket)


def leave(ticket: Ticket) -> None:
    """The attempt is over: give back its place if it never reached a thread."""
    _ticket.set(None)
    _executor().leave(ticket)


def current_lane() -> str:
    """The lane this task's argon2 work goes to (priority outside an admitted attempt)."""
    ticket = _ticket.get()
    return ticket.lane if ticket is not None and not ticket.closed else PRIORITY


def lane_stats() -> dict[str, dict[str, int]]:
    """Per lane: attempts waiting now, jobs started, verifications, refusals (this process)."""
    pool = _executor()
    queued = pool.queue_lengths()
    return {
        lane: {
            "queued": queued[lane],
            "started": pool.started[lane],
            "verifications": pool.verifications[lane],
            "refused": pool.refused[lane],
        }
        for lane in LANES
    }


def _lower_priority(increment: int, idle: bool) -> None:
    """Make this pool thread (and the lane threads argon2 starts from it) yield the CPU.

    A burst of AUTHs would otherwise take every core from the event loops and the
    database thread on equal terms, and every open session would wait behind the
    hashing. Linux keeps a nice value and a scheduling policy per thread, and new
    threads inherit both. Under SCHED_IDLE a session's thread that wakes up takes the
    core at once instead of at the end of an argon2 thread's time slice: the message
    p99 while others authenticate fell from 12 to 8 ms (docs/benchmarks.md).
    """
    tid = threading.get_native_id()
    if idle and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):  # a sandbox that forbids it: the nice value only
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    if not increment or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except OSError:  # a sandbox that forbids it: run at the process's priority
        pass


def _pool_thread_ids(reserved: bool = False) -> list[int]:
    """The native ids of the argon2 pool's shared (or ``reserved``) threads started so far."""
    prefix = "kumosubmit-argon2-priority_" if reserved else "kumosubmit-argon2_"
    return [
        thread.native_id
        for thread in threading.enumerate()
        if thread.name.startswith(prefix) and thread.native_id is not None
    ]


def pool_thread_policies(reserved: bool = False) -> list[int]:
    """The scheduling policy of each shared (or ``reserved``) argon2 thread (``os.SCHED_*``)."""
    return [os.sched_getscheduler(tid) for tid in _pool_thread_ids(reserved)]


def pool_thread_niceness(reserved: bool = False) -> list[int]:
    """The nice value of each shared (or ``reserved``) argon2 thread (for tests and operators)."""
    return [os.getpriority(os.PRIO_PROCESS, tid) for tid in _pool_thread_ids(reserved)]


@sensitive_variables()
def make_hash(password: str) -> str:
    """Hash a new password with the configured parameters."""
    return hasher().hash(password)


@sensitive_variables()
def verify(encoded: str | None, password: str) -> tuple[bool, bool]:
    """Return (matches, needs_rehash). Never raises for a wrong or broken hash.

    With ``encoded`` None, verify against :func:`dummy_hash` (and never match).
    An imported hash (see :func:`import_hash`) always needs a rehash when it matches.
    """
    if encoded is not None and encoded.startswith("{"):
        matches = _verify_imported(encoded, password)
        # Never answer faster than an unknown login would (it costs a dummy argon2
        # verification): until its first good login an imported hash costs its own
        # scheme's time plus that.
        verify(None, password)
        return matches, matches
    check = argon2_memory.verify if app_settings.ARGON2_KEEP_MEMORY else hasher().verify
    try:
        check(encoded or dummy_hash(), password)
    except VerifyMismatchError:
        return False, False
    except (VerificationError, InvalidHashError):
        # A hash we cannot read never lets anyone in (fail closed).
        return False, False
    if encoded is None:
        return False, False
    # check_needs_rehash compares the type too: an imported argon2i hash is upgraded.
    return True, hasher().check_needs_rehash(encoded)


async def _in_pool(func: Callable[..., R], *args: Any) -> R:
    """``func(*args)`` in the bounded argon2 pool, counted in its metrics while it waits and runs.

    As ``run_in_executor`` does, but a job cancelled before it starts stops counting.
    """
    job = metrics.PoolJob(func)
    ticket = _ticket.get()
    if ticket is not None and ticket.closed:
        ticket = None
    pool = _executor()
    future = pool.submit(job, *args, ticket=ticket)
    future.add_done_callback(job.done)
    waiting = asyncio.wrap_future(future)
    if ticket is not None and ticket.held and ticket.max_wait is not None:
        left = ticket.admitted_at + ticket.max_wait - time.monotonic()
        try:
            done, _ = await asyncio.wait({waiting}, timeout=max(0.0, left))
        except asyncio.CancelledError:  # the session went away: the job need not run
            waiting.cancel()
            raise
        if not done and future.cancel():  # not started yet: it never will
            pool.expire(ticket)
            if ticket.expired is not None:
                raise ticket.expired()
            raise TimeoutError("the argon2 lane did not start this job in time")
    result: R = await waiting
    return result


class _Durations(collections.deque[float]):
    """Seconds the latest verifications took, forgotten when KUMOSUBMIT changes (the
    argon2 parameters may have)."""

    def cache_clear(self) -> None:
        self.clear()


#: How long the latest verifications took as a session waited for them (the pool's queue
#: included): a decoy login is answered after as long (kumosubmit/policy/decoys.py).
_recent_verifications = clears_on_setting_change(_Durations(maxlen=32))
#: Until this process has verified a password: about what the default parameters take here.
DEFAULT_VERIFICATION_SECONDS = 0.12


async def averify(encoded: str | None, password: str) -> tuple[bool, bool]:
    """:func:`verify` in the bounded argon2 pool."""
    started = time.monotonic()
    try:
        return await _in_pool(verify, encoded, password)
    finally:
        _recent_verifications.append(time.monotonic() - started)


def typical_verification_seconds() -> float:
    """The median time of this process's recent verifications, as the sessions saw them."""
    if not _recent_verifications:
        return DEFAULT_VERIFICATION_SECONDS
    return statistics.median(_recent_verifications)


async def amake_hash(password: str) -> str:
    """:func:`make_hash` in the bounded argon2 pool."""
    return await _in_pool(make_hash, password)


async def awarm_up() -> None:
    """Compute the dummy hash before the first client needs it."""
    await _in_pool(dummy_hash)


# -- imported hashes ------------------------------------------------------------------

#: The Dovecot passwd-file schemes importsmtpusers accepts (and PLAIN, when asked).
IMPORT_SCHEMES = ("ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT")
#: Dovecot's names for a password stored in the clear.
PLAIN_SCHEMES = ("PLAIN", "CLEAR", "CLEARTEXT")
#: Schemes stored with their ``{SCHEME}`` tag (argon2 is stored as a bare PHC string).
TAGGED_SCHEMES = ("BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT")

#: The costliest imported hash accepted. Every failed AUTH for such a login costs one
#: verification until its first good login, so an absurd cost would be a denial of
#: service; SHA-crypt runs in pure Python and holds the GIL while it works.
IMPORT_LIMITS = {
    "argon2_memory_kib": 1024 * 1024,  # 1 GiB
    "argon2_time_cost": 20,
    "argon2_parallelism": 16,
    "bcrypt_cost": 15,
    # Dovecot writes 5000 (about 4 ms in pure Python); passlib, and so Ansible's
    # password_hash, 656000 for SHA512-CRYPT (about half a second).
    "sha_crypt_rounds": 1_000_000,
}

_BCRYPT_RE = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_SHA_CRYPT_RE = {
    "SHA512-CRYPT": re.compile(
        r"\$6\$(?:rounds=(\d{1,10})\$)?[./0-9A-Za-z]{0,16}\$[./0-9A-Za-z]{86}"
    ),
    "SHA256-CRYPT": re.compile(
        r"\$5\$(?:rounds=(\d{1,10})\$)?[./0-9A-Za-z]{0,16}\$[./0-9A-Za-z]{43}"
    ),
}
_SCHEME_RE = re.compile(r"\{([A-Za-z0-9._-]+)\}(.*)", re.DOTALL)


class UnusableHash(ValueError):
    """Why an imported password field cannot be used; the message never contains it."""


def _detect_crypt(body: str) -> str | None:
    """The scheme of a bare crypt(3) or PHC string, as Dovecot's CRYPT scheme detects it."""
    for prefix, scheme in (
        ("$argon2id$", "ARGON2ID"),
        ("$argon2i$", "ARGON2I"),
        ("$2a$", "BLF-CRYPT"),
        ("$2b$", "BLF-CRYPT"),
        ("$2y$", "BLF-CRYPT"),
        ("$6$", "SHA512-CRYPT"),
        ("$5$", "SHA256-CRYPT"),
    ):
        if body.startswith(prefix):
            return scheme
    return None


@sensitive_variables()
def import_hash(field: str, *, allow_plain: bool = False) -> str:
    """What to store for a Dovecot passwd-file password field, or :class:`UnusableHash`.

    ``{SCHEME}hash`` for the schemes in :data:`IMPORT_SCHEMES`; a bare crypt
    string or ``{CRYPT}`` is taken by its prefix, as Dovecot's CRYPT does.
    ``{PLAIN}`` is refused unless ``allow_plain``, and then hashed with argon2id
    here: a password is never stored in the clear.
    """
    match = _SCHEME_RE.fullmatch(field)
    scheme, body = (match.group(1).upper(), match.group(2)) if match else (None, field)
    if scheme in PLAIN_SCHEMES:
        if not allow_plain:
            raise UnusableHash(
                f"{{{scheme}}} is a password in the clear; refused without --allow-plain"
            )
        if not body:
            raise UnusableHash(f"empty {{{scheme}}} password")
        return make_hash(body)
    if scheme is None or scheme == "CRYPT":
        detected = _detect_crypt(body)
        if detected is None:
            what = "{CRYPT} hash of a kind" if scheme else "hash without a {SCHEME} prefix"
            raise UnusableHash(f"{what} that cannot be verified (supported: {_supported()})")
        scheme = detected
    if scheme not in IMPORT_SCHEMES:
        raise UnusableHash(f"unsupported scheme {{{scheme}}} (supported: {_supported()})")
    if scheme.startswith("ARGON2"):
        return _import_argon2(scheme, body)
    if scheme == "BLF-CRYPT":
        bcrypt_match = _BCRYPT_RE.fullmatch(body)
        if bcrypt_match is None:
            raise UnusableHash("malformed {BLF-CRYPT} hash")
        cost = int(bcrypt_match.group(1))
        if not 4 <= cost <= IMPORT_LIMITS["bcrypt_cost"]:
            raise UnusableHash(
                f"{{BLF-CRYPT}} cost {cost} is outside 4..{IMPORT_LIMITS['bcrypt_cost']}"
            )
    else:
        crypt_match = _SHA_CRYPT_RE[scheme].fullmatch(body)
        if crypt_match is None:
            raise UnusableHash(f"malformed {{{scheme}}} hash")
        rounds = int(crypt_match.group(1) or 5000)
        if not 1000 <= rounds <= IMPORT_LIMITS["sha_crypt_rounds"]:
            raise UnusableHash(
                f"{{{scheme}}} rounds={rounds} is outside 1000..{IMPORT_LIMITS['sha_crypt_rounds']}"
            )
    return f"{{{scheme}}}{body}"


def _supported() -> str:
    return ", ".join(f"{{{scheme}}}" for scheme in IMPORT_SCHEMES)


def _import_argon2(scheme: str, body: str) -> str:
    try:
        params = argon2.extract_parameters(body)
    except (InvalidHashError, ValueError):
        raise UnusableHash(f"malformed {{{scheme}}} hash") from None
    expected = argon2.Type.ID if scheme == "ARGON2ID" else argon2.Type.I
    if params.type is not expected:
        raise UnusableHash(f"the {{{scheme}}} hash is of another argon2 type")
    limits = (
        ("memory", params.memory_cost, IMPORT_LIMITS["argon2_memory_kib"]),
        ("time", params.time_cost, IMPORT_LIMITS["argon2_time_cost"]),
        ("parallelism", params.parallelism, IMPORT_LIMITS["argon2_parallelism"]),
    )
    for name, value, limit in limits:
        if value > limit:
            raise UnusableHash(f"{{{scheme}}} {name} cost {value} is above {limit}")
    return body


def imported_scheme(encoded: str) -> str | None:
    """The scheme of a stored hash that is not argon2id with the current settings' type.

    ``SHA512-CRYPT`` for ``{SHA512-CRYPT}$6$...``, ``ARGON2I`` for ``$argon2i$...``;
    None for argon2id and for what is no hash at all.
    """
    if encoded.startswith("{"):
        scheme = encoded[1:].partition("}")[0]
        return scheme if scheme in TAGGED_SCHEMES else None
    if encoded.startswith("$argon2i$"):
        return "ARGON2I"
    return None


def is_usable(encoded: str) -> bool:
    """Whether :func:`verify` can check a password against ``encoded``."""
    return encoded.startswith("$argon2") or imported_scheme(encoded) is not None


@sensitive_variables()
def _verify_imported(encoded: str, password: str) -> bool:
    scheme, _, body = encoded[1:].partition("}")
    try:
        if scheme == "BLF-CRYPT":
            # bcrypt reads at most 72 bytes; Dovecot (libxcrypt) ignores the rest,
            # and bcrypt >= 5 raises instead, so cut as Dovecot did.
            return bcrypt.checkpw(password.encode()[:72], body.encode("ascii"))
        if scheme == "SHA512-CRYPT":
            return bool(sha512_crypt.verify(password, body))
        if scheme == "SHA256-CRYPT":
            return bool(sha256_crypt.verify(password, body))
    except (ValueError, TypeError, UnicodeError):
        # A hash we cannot read never lets anyone in (fail closed).
        return False
    return False
