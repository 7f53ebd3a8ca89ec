"""What the database reads of every AUTH cost the database thread: compiled once, or built.

Before each AUTH the server reads the failure counters of the address, the login
and the pair; the built-in handler reads the login; a success reads the login's
allowed senders. Each runs as a :class:`kumosubmit.compiled_query.CompiledQuery`
(SQL compiled once). This times each read as the server makes it, beside the same
queryset built and compiled by Django every time (the baseline: how they ran
before), on a fresh database with the benchmark's logins. CPU µs per read, the
median of several rounds.

    .venv/bin/python bench/auth_queries.py                 # a temporary SQLite database
    .venv/bin/python bench/auth_queries.py --database-url postgres://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ADDRESS, LOGIN = "127.0.0.3", "load1"


def per_read_us(read: Callable[[], object], reads: int, rounds: int) -> float:
    """The median over ``rounds`` of the CPU µs per ``read()`` (after a warm-up)."""
    for _ in range(100):
        read()
    figures = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(reads):
            read()
        figures.append((time.process_time() - start) / reads * 1e6)
    return statistics.median(figures)


def measure(reads: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Each read: (compiled once, built every time) µs, after checking both give the same."""
    from kumosubmit.credentials import senders, service, throttle
    from kumosubmit.credentials.models import AllowedSender, SmtpLogin

    for n in range(1, 51):
        login = SmtpLogin(username=f"load{n}")
        login.set_password("pw")
        login.save()
        AllowedSender.objects.create(login=login, pattern="@bench.example")
    keys = throttle.Keys.of(throttle.policy(), ADDRESS, LOGIN)
    flat = [part for item in keys.items() for part in item]
    queries: dict[str, tuple[Any, list[str]]] = {
        "failure counters (before every AUTH)": (throttle._COUNTERS, flat),
        "the login (built-in handler)": (service._ACTIVE_LOGIN, [LOGIN]),
        "allowed senders (after a success)": (senders._ENTRIES, [LOGIN]),
    }
    figures = {}
    for name, (query, args) in queries.items():
        compiled = query(*args)
        built = list(query.build(*args))
        assert [row.pk for row in compiled] == [row.pk for row in built], name
        figures[name] = (
            per_read_us(lambda q=query, a=args: q(*a), reads, rounds),
            per_read_us(lambda q=query, a=args: list(q.build(*a)), reads, rounds),
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: a temporary SQLite database")
    parser.add_argument("--reads", type=int, default=2000, help="reads per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (the median is shown)")
    options = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="kumosubmit-auth-queries-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ["KUMOSUBMIT_DATA_DIR"] = str(directory)
    os.environ["DATABASE_URL"] = options.database_url or f"sqlite:///{directory / 'db.sqlite3'}"
    os.environ["BENCH_ARGON2"] = "cheap"  # the hashes only fill the rows
    try:
        import django
        from django.test.utils import setup_databases, teardown_databases

        django.setup()
        # A test database of its own (created and dropped here): never the operator's data.
        old_config = setup_databases(verbosity=0, interactive=False)
        try:
            figures = measure(options.reads, options.rounds)
        finally:
            teardown_databases(old_config, verbosity=0)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"CPU µs per read, median of {options.rounds} rounds of {options.reads}:")
    print(f"  {'':40} {'compiled once':>14} {'built each time':>16}")
    for name, (compiled, built) in figures.items():
        print(f"  {name:40} {compiled:14.1f} {built:16.1f}  ({built / compiled:.1f} x)")
    total_compiled = sum(c for c, _ in figures.values())
    total_built = sum(b for _, b in figures.values())
    print(f"  {'all three':40} {total_compiled:14.1f} {total_built:16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
