"""How long refusing an AUTH takes: unknown login vs wrong password vs inactive login.

Run from the repository root:

    .venv/bin/python bench/auth_timing.py [--tries 20] [--max-seconds 60] [--check]

It sets up the project's settings with a temporary SQLite database (WAL, as
``project/settings.py`` configures it), starts the real listener in this process
on a free loopback port, and sends AUTH PLAIN over STARTTLS with the default
argon2 parameters. Each try uses a login name not tried before (as someone
probing for logins would), the kinds interleaved in random order. It prints the
median, quartiles and mean of each kind and the ratios to a wrong password; an
attacker who could tell them apart could find out which logins exist.

The brute-force counters stay on (their bookkeeping is part of what a refusal
costs), with no delay and no block, which would otherwise dominate. At most
``--tries`` of each kind (<= 500), and it stops early after ``--max-seconds``.
``--check`` exits 1 if unknown or inactive differ from a wrong password by 10 %
or more.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "the right password"  # noqa: S105 - the throwaway logins' password
TOLERANCE = 0.10


def setup_django(directory: Path) -> None:
    """The project's settings on a fresh SQLite database in ``directory``."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=f"sqlite:///{directory / 'bench.sqlite3'}",
        KUMOSUBMIT_DATA_DIR=str(directory),
        DJANGO_SECRET_KEY="bench-secret-key-not-for-production",  # noqa: S106 - a throwaway
    )
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    # One INFO line per connection would drown the figures.
    logging.getLogger("kumosubmit").setLevel(logging.WARNING)


def report(times: dict[str, list[float]]) -> dict[str, float]:
    """Print the figures; return the ratios of the medians to a wrong password's."""
    medians = {kind: statistics.median(samples) for kind, samples in times.items()}
    print(f"{'kind':<16}{'n':>5}{'median':>11}{'p25':>11}{'p75':>11}{'mean':>11}")
    for kind, samples in times.items():
        q1, _, q3 = statistics.quantiles(samples, n=4)
        print(
            f"{kind:<16}{len(samples):>5}{medians[kind] * 1000:>9.2f}ms{q1 * 1000:>9.2f}ms"
            f"{q3 * 1000:>9.2f}ms{statistics.fmean(samples) * 1000:>9.2f}ms"
        )
    reference = medians["wrong-password"]
    ratios = {kind: medians[kind] / reference for kind in ("unknown", "inactive")}
    for kind, ratio in ratios.items():
        print(f"median {kind} / wrong-password = {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=30, help="tries of each kind (<= 500)")
    parser.add_argument("--max-seconds", type=float, default=60, help="stop measuring after")
    parser.add_argument("--check", action="store_true", help="exit 1 beyond 10 %%")
    options = parser.parse_args(argv)
    tries = max(4, min(options.tries, 500))

    with tempfile.TemporaryDirectory(prefix="kumosubmit-bench-") as tmp:
        directory = Path(tmp)
        setup_django(directory)
        # Only now that Django is set up.
        from django.conf import settings
        from django.db import connections
        from django.test import override_settings

        from kumosubmit.conf import DEFAULTS, app_settings
        from kumosubmit.credentials import hashing
        from tests.live import LiveSMTPServer
        from tests.refusal_timing import NotRefused, make_logins, measure
        from tests.tlsutil import make_pki

        lenient = {
            **DEFAULTS["BRUTE_FORCE"],
            "DELAY": 0,
            "MAX_DELAY": 0,
            "IP_BLOCK_AFTER": None,
            "LOGIN_BLOCK_AFTER": None,
        }
        overrides = {
            **settings.KUMOSUBMIT,
            "MAX_AUTH_ATTEMPTS": 10_000,
            "MAX_ERRORS": 10_000,
            "BRUTE_FORCE": lenient,
        }
        with override_settings(KUMOSUBMIT=overrides):
            print(
                f"argon2 {app_settings.ARGON2}, {hashing.pool_size()} thread(s); "
                f"SQLite; up to {tries} tries of each kind"
            )
            make_logins(tries + 2, PASSWORD)
            server = LiveSMTPServer(make_pki(directory / "pki"))
            server.start()
            try:
                deadline = time.monotonic() + options.max_seconds
                measure(server, PASSWORD, 2, first=tries, deadline=deadline)  # warm up
                times = measure(server, PASSWORD, tries, first=0, deadline=deadline)
            except NotRefused as error:
                raise SystemExit(str(error)) from None
            finally:
                server.stop()
        connections.close_all()
    if min(len(samples) for samples in times.values()) < 4:
        print("too few tries before --max-seconds to say anything")
        return 1
    ratios = report(times)
    if options.check and any(abs(ratio - 1) >= TOLERANCE for ratio in ratios.values()):
        print(f"FAIL: beyond {TOLERANCE:.0%}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
