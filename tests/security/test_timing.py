"""Timing (hardening issue, item 7): refusing an unknown login costs what a wrong password does.

A client that can tell "no such login" from "wrong password" by the time the
535 takes can enumerate logins. The built-in handler verifies unknown and
inactive logins against a dummy hash with the current argon2 parameters; this
measures the result from the outside, through real TLS sessions, with argon2
costly enough (a few ms) to dominate, as it does in production.
``bench/auth_timing.py`` reports the same figures with the real parameters.
"""

from __future__ import annotations

import statistics

import pytest

from tests.live import plain_blob, quitting
from tests.refusal_timing import make_logins, measure

PASSWORD = "timing: correct password Xq7#Lw2"
#: Costly enough that one verification takes milliseconds, as the hash should dominate.
ARGON2 = {"time_cost": 3, "memory_cost": 32768, "parallelism": 1}
TRIES = 25  # of each kind, interleaved
#: Leaving out the dummy verification would make an unknown login several times faster
#: than a wrong password; the tolerance leaves room for a loaded CI machine's noise.
TOLERANCE = 0.20


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
    measure(smtp_server, PASSWORD, 2, first=TRIES)
    times = measure(smtp_server, PASSWORD, TRIES)
    medians = {kind: statistics.median(samples) for kind, samples in times.items()}
    report = ", ".join(f"{kind} {median * 1000:.2f} ms" for kind, median in medians.items())
    # argon2 is what the time is made of, or the comparison would say nothing.
    assert medians["wrong-password"] > 0.02, report
    reference = medians["wrong-password"]
    for kind in ("unknown", "inactive"):
        ratio = medians[kind] / reference
        assert abs(ratio - 1) < TOLERANCE, f"{kind}/wrong-password = {ratio:.3f} ({report})"
