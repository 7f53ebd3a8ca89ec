"""What the sending limits cost per message, apart from the SMTP load: reservations per second.

Run from the repository root (it makes a temporary SQLite database, or one on
``--database-url``'s PostgreSQL server, and drops it after):

    .venv/bin/python bench/sendlimits.py [--seconds N] [--database-url URL]

It measures, in one process, on the database thread the listener uses (``run_db``):

- **store**: storing a 10 KB message through the spool, one at a time (what every
  message costs anyway, the reference);
- **reserve, alone**: the reservation of one message against the defaults' three rules
  (two message rules, one recipient rule), one at a time: what a message adds at MAIL FROM
  when nothing else is happening;
- **reserve, 8 at once**: eight sessions of eight logins each reserving in a loop, so
  that reservations are made together as under load;
- **reserve + release**: a transaction refused after MAIL (reserve, then give back).

Each figure is the mean time per operation, wall clock, in one event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def setup(database_url: str | None, directory: Path) -> object:
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ["KUMOSUBMIT_DATA_DIR"] = str(directory)
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-secret-key-not-for-production")
    drop = None
    if database_url:
        from submission import temporary_postgres

        url, drop = temporary_postgres(database_url, "limits")
        os.environ["DATABASE_URL"] = url
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{directory / 'bench.sqlite3'}"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return drop


async def timed(label: str, seconds: float, one: object, concurrency: int = 1) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await one(n)  # type: ignore[operator]
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.monotonic() - started
    per_op = elapsed / done * 1e6 * concurrency if concurrency == 1 else elapsed / done * 1e6
    print(f"  {label:<44} {done / elapsed:>9.0f}/s  {per_op:>8.0f} µs each", flush=True)
    return per_op


async def measure(seconds: float) -> None:
    from kumosubmit.credentials.models import SmtpLogin
    from kumosubmit.db import run_db
    from kumosubmit.sendlimits.backends import DatabaseBackend
    from kumosubmit.sendlimits.sessions import login_buckets
    from kumosubmit.spool import SpooledMessage, get_spool

    def make_logins() -> list[list]:
        logins = []
        for n in range(8):
            login, _ = SmtpLogin.objects.get_or_create(username=f"limits{n}")
            logins.append([(bucket, 1) for bucket in login_buckets(login)])
        return logins

    items = await run_db(make_logins)
    rules = ", ".join(f"{b.kind} {b.rule}" for b, _ in items[0])
    print(f"rules per message: {rules}", flush=True)
    backend = DatabaseBackend()
    content = b"Subject: bench\r\n\r\n" + b"x" * 10_240

    async def store(n: int) -> None:
        message = SpooledMessage("a@bench.example", ["b@bench.example"], content, {})
        await get_spool().store(message)

    async def reserve(n: int) -> None:
        assert await backend.areserve(items[n]) is None

    async def reserve_release(n: int) -> None:
        assert await backend.areserve(items[n]) is None
        await backend.arelease(items[n])

    await timed("store a 10 KB message (the reference)", seconds, store)
    await timed("reserve, alone", seconds, reserve)
    await timed("reserve, 8 sessions at once", seconds, reserve, concurrency=8)
    await timed("store, 8 sessions at once", seconds, store, concurrency=8)
    await timed("reserve then release, alone", seconds, reserve_release)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="per measurement (5)")
    parser.add_argument("--database-url", metavar="URL", help="PostgreSQL server to use")
    options = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="kumosubmit-limits-"))
    drop = setup(options.database_url, directory)
    from django.db import connection

    print(f"database: {connection.vendor}", flush=True)
    try:
        asyncio.run(measure(options.seconds))
    finally:
        from kumosubmit.db import close_db

        asyncio.run(close_db())
        if drop is not None:
            drop()  # type: ignore[operator]
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
