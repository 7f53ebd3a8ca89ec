"""Timing (hardening issue, item 7): refusing an unknown login costs what a wrong password does.

A client that can tell "no such login" from "wrong password" by the time the
535 takes can enumerate logins. The built-in handler verifies unknown and
inactive logins against a dummy hash with the current argon2 parameters; this
measures the result from the outside, through real TLS sessions, with argon2
costly enough (a few ms) to dominate, as it does in production.
``bench/auth_timing.py`` reports the same figures with the real parameters.
"""

from __future__ import annotations

import random
import statistics
import time

import pytest

from kumosubmit.credentials.models import SmtpLogin
from tests.live import LiveSMTPServer, plain_blob, quitting

PASSWORD = "timing: correct password Xq7#Lw2"
#: Costly enough that one verification takes milliseconds, as the hash should dominate.
ARGON2 = {"time_cost": 3, "memory_cost": 32768, "parallelism": 1}
TRIES = 25  # of each kind, interleaved
#: Leaving out the dummy verification would make an unknown login several times faster
#: than a wrong password; the tolerance leaves room for a loaded CI machine's noise.
TOLERANCE = 0.20

# Each try names a login not tried before, as someone probing for logins would: so
# the brute-force counters of every kind start from nothing (their bookkeeping is
# part of the time) and only the login's existence differs.
KINDS = {
    "unknown": ("nobody-{n}@example.com", "whatever password {n}"),
    "wrong-password": ("known-{n}@example.com", "wrong password {n}"),
    "inactive": ("inactive-{n}@example.com", PASSWORD),
}


def make_logins(tries: int, password: str) -> None:
    """The known and the inactive logins of every try (one hash, copied: it is slow)."""
    template = SmtpLogin()
    template.set_password(password)
    SmtpLogin.objects.bulk_create(
        SmtpLogin(
            username=f"{prefix}-{n}@example.com",
            password_hash=template.password_hash,
            is_active=prefix == "known",
        )
        for n in range(tries)
        for prefix in ("known", "inactive")
    )


def measure(server: LiveSMTPServer, tries: int, first: int = 0) -> dict[str, list[float]]:
    """Seconds each refused AUTH PLAIN took, by kind, measured at the client."""
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    rng = random.Random(7)
    with quitting(server.starttls()) as client:
        for n in range(first, first + tries):
            order = list(KINDS)
            rng.shuffle(order)  # no kind always goes first (caches, the argon2 pool)
            for kind in order:
                user, password = (part.format(n=n) for part in KINDS[kind])
                blob = plain_blob("", user, password)
                started = time.perf_counter()
                code, _ = client.docmd("AUTH", "PLAIN " + blob)
                times[kind].append(time.perf_counter() - started)
                assert code == 535, (kind, code)
    return times


@pytest.fixture
def costly_argon2(settings, lenient_limits):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "ARGON2": ARGON2}


def test_unknown_login_is_refused_as_slowly_as_a_wrong_password(
    smtp_server, secret_watch, costly_argon2
):
    secret_watch.add(PASSWORD)
    make_logins(TRIES + 2, PASSWORD)
    with quitting(smtp_server.starttls()) as client:  # warm up: connections, pools, caches
        blob = plain_blob("", "known-0@example.com", PASSWORD)
        assert client.docmd("AUTH", "PLAIN " + blob)[0] == 235
    measure(smtp_server, 2, first=TRIES)
    times = measure(smtp_server, TRIES)
    medians = {kind: statistics.median(samples) for kind, samples in times.items()}
    report = ", ".join(f"{kind} {median * 1000:.2f} ms" for kind, median in medians.items())
    # argon2 is what the time is made of, or the comparison would say nothing.
    assert medians["wrong-password"] > 0.02, report
    reference = medians["wrong-password"]
    for kind in ("unknown", "inactive"):
        ratio = medians[kind] / reference
        assert abs(ratio - 1) < TOLERANCE, f"{kind}/wrong-password = {ratio:.3f} ({report})"
