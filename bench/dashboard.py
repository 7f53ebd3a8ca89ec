"""How long the admin's operator's view takes to render over a large audit table.

Seeds ``--rows`` connection records (1,000,000 by default) into a throwaway test
database (SQLite in a temporary folder, or ``test_<name>`` beside the database
of ``--database-url``, created and dropped here), spread evenly over the last
``--days`` days (7 by default: every row falls in the 7-day charts, the worst
case), then renders ``/admin/kumosubmit/connectionrecord/dashboard/`` through
Django's test client as a superuser and prints the median of ``--renders`` wall
times, and each query's time of the last render.

    .venv/bin/python bench/dashboard.py
    .venv/bin/python bench/dashboard.py --database-url postgres://postgres@127.0.0.1:5432/kumosubmit_wt20
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLUMNS = (
    "conn_id",
    "started_at",
    "ended_at",
    "listener",
    "peer_address",
    "peer_port",
    "local_address",
    "local_port",
    "tls_version",
    "tls_cipher",
    "ehlo_name",
    "auth_mechanism",
    "authc",
    "authz",
    "auth_outcome",
    "auth_attempts",
    "messages_accepted",
    "bytes_accepted",
    "auth_lane",
    "meta",
)


def rows(count: int, days: float, seed: int = 20) -> Iterator[tuple]:
    """Audit rows as the server writes them: mostly good AUTHs, a tail of guessers."""
    rng = random.Random(seed)  # noqa: S311 (reproducible data, no secret)
    now = datetime.now(UTC)
    span = days * 86400
    for n in range(count):
        started = now - timedelta(seconds=span * (n + 0.5) / count)
        roll = rng.random()
        if roll < 0.80:
            outcome, attempts, messages = "success", 1, rng.choice((0, 1, 1, 2, 3))
            address = f"10.{rng.randrange(64)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            authc = f"user{rng.randrange(20_000)}@example.com"
        elif roll < 0.98:
            outcome = "failure" if roll < 0.95 else "blocked"
            attempts, messages = 3, 0
            # Guessers: a few thousand addresses, some far busier than others.
            address = f"203.0.{int(rng.paretovariate(1.2)) % 256}.{rng.randrange(1, 20)}"
            authc = f"user{int(rng.paretovariate(1.1)) % 20_000}@example.com"
        else:
            outcome, attempts, messages, authc = "none", 0, 0, ""
            address = f"198.51.100.{rng.randrange(1, 255)}"
        meta = {
            "conn_id": f"b{n:x}",
            "listener": "starttls",
            "peer_address": address,
            "tls_version": "TLSv1.3",
            "ehlo_name": "client.example",
            "auth_attempts": [{"mechanism": "PLAIN", "authc": authc, "outcome": outcome}]
            if authc
            else [],
            "messages_accepted": messages,
        }
        yield (
            f"b{n:x}",
            started,
            started + timedelta(seconds=2),
            "starttls",
            address,
            40000 + n % 20000,
            "192.0.2.25",
            587,
            "TLSv1.3",
            "TLS_AES_256_GCM_SHA384",
            "client.example",
            "PLAIN" if authc else "",
            authc,
            authc,
            outcome,
            attempts,
            messages,
            messages * 4096,
            "bounded" if authc else "",
            json.dumps(meta),
        )


def seed(count: int, days: float) -> float:
    """Insert the rows the fastest way each database has; the seconds it took."""
    from django.db import connection, transaction

    from kumosubmit.audit.models import ConnectionRecord

    table = ConnectionRecord._meta.db_table
    began = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows(count, days):
                    copy.write_row(row)
        else:
            marks = ", ".join("%s" for _ in COLUMNS)
            sql = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({marks})"  # noqa: S608
            batch = []
            for row in rows(count, days):
                # SQLite keeps aware datetimes as UTC text, as Django writes them.
                batch.append((row[0], _sqlite_time(row[1]), _sqlite_time(row[2]), *row[3:]))
                if len(batch) == 50_000:
                    cursor.executemany(sql, batch)
                    batch = []
            if batch:
                cursor.executemany(sql, batch)
    with connection.cursor() as cursor:
        # What autovacuum (PostgreSQL) or a periodic ANALYZE would have done by now.
        cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
    return time.perf_counter() - began


def _sqlite_time(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def measure(count: int, days: float, renders: int, explain: bool = False) -> dict:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from kumosubmit.audit.models import ConnectionRecord

    seconds = seed(count, days)
    assert ConnectionRecord.objects.count() == count
    admin = User.objects.create_superuser("bench", "bench@example.org", "bench password 1")
    client = Client()
    client.force_login(admin)
    url = "/admin/kumosubmit/connectionrecord/dashboard/"
    assert client.get(url).status_code == 200  # warm-up: caches, first plans
    times = []
    for _ in range(renders):
        with CaptureQueriesContext(connection) as queries:
            began = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - began)
        assert response.status_code == 200
    plans = []
    if explain:
        for query in queries.captured_queries:
            if "connectionrecord" in query["sql"]:
                with connection.cursor() as cursor:
                    prefix = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
                    cursor.execute(prefix + query["sql"])
                    plans.append(
                        "\n".join(" ".join(str(c) for c in row) for row in cursor.fetchall())
                    )
    return {
        "plans": plans,
        "vendor": connection.vendor,
        "rows": count,
        "seed_s": seconds,
        "render_ms": [t * 1000 for t in times],
        "queries": [(float(q["time"]) * 1000, q["sql"]) for q in queries.captured_queries],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: a temporary SQLite database")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--renders", type=int, default=5, help="renders timed (median shown)")
    parser.add_argument("--explain", action="store_true", help="print the audit queries' plans")
    options = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="kumosubmit-dashboard-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ["KUMOSUBMIT_DATA_DIR"] = str(directory)
    os.environ["DATABASE_URL"] = options.database_url or f"sqlite:///{directory / 'db.sqlite3'}"
    # The view is measured, not the sign-in in front of it.
    os.environ["BENCH_KUMOSUBMIT"] = json.dumps({"SECOND_FACTOR": "none"})
    try:
        import django
        from django.test.utils import (
            setup_databases,
            setup_test_environment,
            teardown_databases,
            teardown_test_environment,
        )

        django.setup()
        setup_test_environment()
        # A test database of its own (created and dropped here): never the operator's data.
        old_config = setup_databases(verbosity=0, interactive=False)
        try:
            figures = measure(options.rows, options.days, options.renders, options.explain)
        finally:
            teardown_databases(old_config, verbosity=0)
            teardown_test_environment()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    out = io.StringIO()
    print(
        f"{figures['vendor']}: {figures['rows']:,} audit rows over {options.days:g} days "
        f"(seeded in {figures['seed_s']:.1f} s)",
        file=out,
    )
    render = figures["render_ms"]
    print(
        f"  render: median {statistics.median(render):.0f} ms of {len(render)} "
        f"(min {min(render):.0f}, max {max(render):.0f})",
        file=out,
    )
    print("  queries of the last render (ms):", file=out)
    for ms, sql in figures["queries"]:
        print(f"    {ms:8.1f}  {sql[:110]}", file=out)
    for plan in figures["plans"]:
        print("  plan:", plan.replace("\n", "\n        "), file=out)
    print(out.getvalue(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
