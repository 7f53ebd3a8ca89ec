"""Audit rows are written in batches, off the sessions' way, and one bad row costs only itself."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from collections.abc import Callable
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.audit.recorder import AuditWriter
from kumosubmit.db import run_db
from kumosubmit.meta import ConnectionMeta


def finished(n: int) -> ConnectionMeta:
    meta = ConnectionMeta(peer=("127.0.0.9", 40000 + n), local=("127.0.0.1", 2587), listener="x")
    meta["ehlo_name"] = f"client-{n}.test"
    return meta


async def write_all(metas: list[ConnectionMeta]) -> list[str]:
    """Submit ``metas`` as connections ending at once; the SQL the database thread ran."""
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coroutine) -> None:
        tasks.add(asyncio.get_running_loop().create_task(coroutine))

    capture: dict[str, CaptureQueriesContext] = {}

    def start() -> None:  # in the database thread, on its own connection
        capture["ctx"] = CaptureQueriesContext(connection)
        capture["ctx"].__enter__()

    def stop() -> list[str]:
        capture["ctx"].__exit__(None, None, None)
        return [query["sql"] for query in capture["ctx"].captured_queries]

    await run_db(start)
    writer = AuditWriter(spawn)
    for meta in metas:
        writer.submit(meta)
    while tasks:
        done = list(tasks)
        tasks.clear()
        await asyncio.gather(*done)
    return await run_db(stop)


def transactions(sql: list[str]) -> int:
    """How many write transactions ``sql`` made.

    SQLite splits a bulk INSERT into several, below its parameter limit, in
    one transaction; a single INSERT runs in autocommit.
    """
    count, inside = 0, False
    for statement in sql:
        word = statement.split(None, 1)[0].upper()
        if word == "BEGIN":
            inside = True
        elif word == "COMMIT":
            inside, count = False, count + 1
        elif word == "INSERT" and not inside:
            count += 1  # in autocommit
    return count


def test_connections_ending_together_share_one_insert(transactional_db):
    sql = asyncio.run(write_all([finished(n) for n in range(120)]))
    assert transactions(sql) == 1
    rows = ConnectionRecord.objects.order_by("peer_port")
    assert [r.ehlo_name for r in rows] == [f"client-{n}.test" for n in range(120)]
    assert all(r.ended_at >= r.started_at for r in rows)


def test_more_than_a_batch_takes_a_few_inserts(transactional_db):
    sql = asyncio.run(write_all([finished(n) for n in range(AuditWriter.BATCH * 2 + 1)]))
    assert transactions(sql) == 3
    assert ConnectionRecord.objects.count() == AuditWriter.BATCH * 2 + 1


def test_a_row_that_cannot_be_stored_costs_only_itself(transactional_db, caplog):
    metas = [finished(n) for n in range(5)]
    # Something JSON cannot hold, past set_meta's check (as a dict subclass allows).
    dict.__setitem__(metas[2], "from_a_hook", float("nan"))
    caplog.set_level(logging.WARNING, "kumosubmit.audit")
    asyncio.run(write_all(metas))
    assert sorted(ConnectionRecord.objects.values_list("peer_port", flat=True)) == [
        40000,
        40001,
        40003,
        40004,
    ]
    assert f"could not write the audit record of connection {metas[2]['conn_id']}" in caplog.text


def test_every_connection_of_a_burst_gets_its_row(smtp_server):
    def connect_and_quit(n: int) -> Callable[[], None]:
        client = smtplib.SMTP(
            smtp_server.host,
            smtp_server.starttls_port,
            local_hostname=f"burst-{n}.test",
            timeout=10,
        )
        client.ehlo()
        return client.quit

    quits = [connect_and_quit(n) for n in range(15)]
    for quit_ in quits:
        quit_()
    smtp_server.settle()
    names = set(ConnectionRecord.objects.values_list("ehlo_name", flat=True))
    assert names == {f"burst-{n}.test" for n in range(15)}
