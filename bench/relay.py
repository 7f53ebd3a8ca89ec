"""Relay throughput: messages per second to a sink that accepts everything, beside its ceiling.

Run from the repository root:

    .venv/bin/python bench/relay.py [--messages 2000] [--workers 4] [--size 10240]
                                    [--postgres postgres://postgres@127.0.0.1:5432/postgres]

The sink is a plain aiosmtpd server on a free loopback port, in a process of
its own (so it does not share a core's GIL with what it measures), that
accepts every message. The run measures, in this order:

1. the sink's ceiling: the same number of messages of the same size sent
   straight to it by an aiosmtplib client over ``--workers`` connections,
   each reused for every message, with no database in the way;
2. the relay: the messages stored as the SMTP path stores them, then one
   ``RelayWorker`` (what ``runrelay --once --workers N`` runs) claiming,
   delivering over ``--workers`` reused connections and recording outcomes.

Both send plaintext to 127.0.0.1 (``--tls none``), so the figures are about
the relay, not TLS. The database is a temporary SQLite file (WAL and
synchronous=FULL, as ``project/settings.py`` configures it) or, with
``--postgres URL``, a temporary database created through that server and
dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# -- the sink, in its own process ------------------------------------------------------


def serve_sink(port: int) -> None:
    """Accept every message on 127.0.0.1:port; print the count on SIGTERM."""
    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    received = 0

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            nonlocal received
            received += 1
            return "250 2.0.0 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await loop.create_server(
            lambda: SMTP(Handler(), hostname="sink.bench"), "127.0.0.1", port
        )
        print("ready", flush=True)
        await stop.wait()
        server.close()
        print(received, flush=True)

    asyncio.run(main())


class SinkProcess:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(  # noqa: S603 - our own script
            [sys.executable, __file__, "--serve-sink", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return int(out.strip().splitlines()[-1])


# -- the figures -----------------------------------------------------------------------


def message_bytes(size: int, n: int) -> bytes:
    head = (
        f"Received: from client.bench ([127.0.0.1])\r\n\tby mx.bench (kumosubmit) "
        f"with ESMTPSA id {n};\r\n\tMon, 23 Nov 2026 06:00:00 +0000\r\n"
        f"Message-ID: <{n}.{uuid.uuid4().hex}@bench.invalid>\r\nFrom: alice@example.com\r\n"
        f"To: bob@example.org\r\nSubject: benchmark {n}\r\n\r\n"
    ).encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    body = (line * (size // len(line) + 1))[: max(size - len(head) - 2, 0)]
    return head + body.rstrip(b"\r\n") + b"\r\n"


async def sink_ceiling(port: int, messages: int, connections: int, size: int) -> float:
    """Messages per second an aiosmtplib client gets into the sink, no database involved."""
    import aiosmtplib

    contents = [message_bytes(size, n) for n in range(messages)]
    todo = iter(contents)

    async def client() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        for content in todo:
            await smtp.sendmail("alice@example.com", ["bob@example.org"], content)
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return messages / (time.perf_counter() - started)


def setup_django(directory: Path, database_url: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=database_url,
        KUMOSUBMIT_DATA_DIR=str(directory),
        DJANGO_SECRET_KEY="bench-secret-key-not-for-production",  # noqa: S106 - a throwaway
    )
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    logging.getLogger("kumosubmit").setLevel(logging.WARNING)


def store_messages(messages: int, size: int) -> None:
    from kumosubmit.spool.models import Message

    rows = []
    for n in range(messages):
        content = message_bytes(size, n)
        rows.append(
            Message(
                queue_id=uuid.uuid4().hex,
                mail_from="alice@example.com",
                rcpt_tos=["bob@example.org"],
                size=len(content),
                content=content,
                authz_id="alice@example.com",
                authn_id="alice@example.com",
                conn_id="bench",
            )
        )
    Message.objects.bulk_create(rows, batch_size=500)


async def relay_rate(port: int, workers: int) -> tuple[float, dict[str, int]]:
    from kumosubmit.db import close_db
    from kumosubmit.relay.config import RelayConfig
    from kumosubmit.relay.worker import RelayWorker

    config = RelayConfig(host="127.0.0.1", port=port, tls="none", workers=workers)
    worker = RelayWorker(config)
    started = time.perf_counter()
    stats = await worker.run(once=True)
    elapsed = time.perf_counter() - started
    await close_db()
    return stats.get("delivered", 0) / elapsed, stats


def temporary_postgres(url: str) -> tuple[str, object]:
    """A new empty database on the server at ``url``; returns its URL and a dropper."""
    import psycopg

    name = f"kumosubmit_bench_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')

    return url.rsplit("/", 1)[0] + "/" + name, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4, help="connections, for both figures")
    parser.add_argument("--size", type=int, default=10 * 1024, help="bytes per message")
    parser.add_argument("--postgres", metavar="URL", help="a server to make a temporary DB on")
    parser.add_argument("--serve-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink)
        return

    with tempfile.TemporaryDirectory(prefix="kumosubmit-bench-") as tmp:
        directory = Path(tmp)
        drop = None
        if args.postgres:
            database_url, drop = temporary_postgres(args.postgres)
            backend = "PostgreSQL"
        else:
            database_url, backend = f"sqlite:///{directory / 'bench.sqlite3'}", "SQLite"
        sink = SinkProcess()
        try:
            setup_django(directory, database_url)
            ceiling = asyncio.run(sink_ceiling(sink.port, args.messages, args.workers, args.size))
            store_messages(args.messages, args.size)
            rate, stats = asyncio.run(relay_rate(sink.port, args.workers))
        finally:
            received = sink.stop()
            if drop is not None:
                drop()
    assert stats == {"delivered": args.messages}, stats
    assert received == 2 * args.messages, received
    print(f"{args.messages} messages of {args.size} bytes, {args.workers} connections, {backend}:")
    print(f"  sink ceiling (aiosmtplib straight to the sink): {ceiling:8.0f} messages/s")
    print(f"  relay (claim, deliver, record):                  {rate:8.0f} messages/s")
    print(f"  relay / ceiling: {rate / ceiling:.2f}")


if __name__ == "__main__":
    main()
