"""How long refusing an AUTH takes, by why it is refused: the logins and the measuring.

Shared by tests/security/test_timing.py (argon2 costly enough to dominate) and
bench/auth_timing.py (the real parameters), so both measure the same thing.
Import it once Django is set up.
"""

from __future__ import annotations

import random
import time

from kumosubmit.credentials.models import SmtpLogin
from tests.live import LiveSMTPServer, plain_blob, quitting

KINDS = ("unknown", "wrong-password", "inactive")


class NotRefused(AssertionError):
    """A try that should have been refused with 535 got another reply."""


def attempt(kind: str, n: int, password: str) -> tuple[str, str]:
    """The login and password that try ``n`` of ``kind`` sends (``password`` is the right one).

    Each try names a login not tried before, as someone probing for logins would: so
    the brute-force counters of every kind start from nothing (their bookkeeping is
    part of the time) and only the login's existence differs.
    """
    return {
        "unknown": (f"nobody-{n}@example.com", f"a guessed password {n}"),
        "wrong-password": (f"known-{n}@example.com", f"a wrong password {n}"),
        "inactive": (f"inactive-{n}@example.com", password),
    }[kind]


def make_logins(count: int, password: str) -> None:
    """The known and the inactive logins of every try (one hash, copied: it is slow)."""
    template = SmtpLogin()
    template.set_password(password)
    SmtpLogin.objects.bulk_create(
        SmtpLogin(
            username=f"{prefix}-{n}@example.com",
            password_hash=template.password_hash,
            is_active=prefix == "known",
        )
        for n in range(count)
        for prefix in ("known", "inactive")
    )


def measure(
    server: LiveSMTPServer,
    password: str,
    tries: int,
    first: int = 0,
    deadline: float | None = None,
) -> dict[str, list[float]]:
    """Seconds each refused AUTH PLAIN took, by kind, measured at the client.

    Tries ``first`` to ``first + tries``, or fewer once ``time.monotonic()`` passes
    ``deadline``; raises :class:`NotRefused` if one is not refused.
    """
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    rng = random.Random(7)
    with quitting(server.starttls()) as client:
        for n in range(first, first + tries):
            if deadline is not None and time.monotonic() > deadline:
                break
            order = list(KINDS)
            rng.shuffle(order)  # no kind always goes first (caches, the argon2 pool)
            for kind in order:
                blob = plain_blob("", *attempt(kind, n, password))
                started = time.perf_counter()
                code, _ = client.docmd("AUTH", "PLAIN " + blob)
                times[kind].append(time.perf_counter() - started)
                if code != 535:
                    raise NotRefused(f"{kind}: expected 535, got {code}")
    return times
