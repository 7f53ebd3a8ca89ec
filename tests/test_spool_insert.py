"""The spool's own INSERT writes what the ORM's would; SQLite checkpoints wait for the reply.

``store_together`` writes small messages with one prepared ``executemany``
instead of ``bulk_create`` (kumosubmit/spool/orm.py). These tests store the
same messages both ways, on the real database of the run (SQLite or
PostgreSQL), and compare every column. On SQLite they also show where a
large message's pages are after its commit (in the log, not yet in the
database file) and after a checkpoint.
"""

from __future__ import annotations

import datetime
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.forms.models import model_to_dict

from kumosubmit.signals import message_stored
from kumosubmit.spool.base import SpooledMessage
from kumosubmit.spool.models import Message, MessageState
from kumosubmit.spool.orm import CHECKPOINT_BYTES, _values, checkpoint, store_together
from tests.live import quitting

pytestmark = pytest.mark.django_db(transaction=True)

META = {
    "authz_id": "alice@example.com",
    "authn_id": "alice-login",
    "conn_id": "c0ffee",
    "peer": ["127.0.0.1", 40000],
    "tls": {"version": "TLSv1.3"},
    "ehlo": "client.example\x00with a NUL",  # made storable on the way in
    "when": datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC),  # not JSON by itself
}


def message(n: int, content: bytes = b"Subject: hi\r\n\r\nbody\r\n") -> SpooledMessage:
    return SpooledMessage(
        mail_from=f"sender{n}@example.com",
        rcpt_tos=[f"rcpt{n}@example.org", "other@example.org"],
        content=bytearray(content),
        meta={**META, "n": n},
    )


def row(queue_id: str) -> dict[str, Any]:
    stored = Message.objects.get(queue_id=queue_id)
    values = model_to_dict(stored)
    values["content"] = bytes(stored.content)
    values["received_at"] = stored.received_at
    return values


def test_rows_match_what_bulk_create_writes():
    ours = [message(n) for n in range(3)]
    theirs = [message(n) for n in range(3)]
    before = datetime.datetime.now(datetime.UTC)
    store_together(ours)
    Message.objects.bulk_create(
        [Message(**_values(m, streamed=False)) for m in theirs],
    )
    after = datetime.datetime.now(datetime.UTC)
    for mine, other in zip(ours, theirs, strict=True):
        a, b = row(mine.queue_id), row(other.queue_id)
        for moment in ("received_at", "next_attempt_at"):
            assert before <= a.pop(moment) <= after
            assert before <= b.pop(moment) <= after
        for differs in ("id", "queue_id"):
            assert a.pop(differs) != b.pop(differs)
        assert a == b
        assert a["state"] == MessageState.QUEUED
        assert a["content"] == bytes(mine.content)
        assert a["meta"]["ehlo"] == "client.example\ufffdwith a NUL"
        assert a["meta"]["when"].startswith("2026-11-23")


def test_small_and_large_messages_share_one_transaction():
    large = message(9, b"x" * 1_500_000 + b"\r\n")  # over COPY_CHUNK: streamed in
    batch = [message(1), large, message(2)]
    store_together(batch)
    for stored in batch:
        assert row(stored.queue_id)["content"] == bytes(stored.content)
    assert row(large.queue_id)["size"] == len(large.content)


def sqlite_file() -> Path:
    return Path(connection.settings_dict["NAME"])


def markers(count: int) -> list[bytes]:
    return [f"<marker {n} {uuid.uuid4().hex}>".encode() for n in range(count)]


def in_database_file(marks: list[bytes]) -> int:
    """How many of ``marks`` the main database file holds (the log not counted).

    A mark may straddle two pages; the tests use several and ask for most.
    """
    data = sqlite_file().read_bytes()
    return sum(mark in data for mark in marks)


def spread(marks: list[bytes], size: int) -> bytes:
    """``size`` bytes of lines with ``marks`` spread through them."""
    line = b"z" * 78 + b"\r\n"
    lines = [line] * (size // len(line))
    step = len(lines) // (len(marks) + 1)
    for n, mark in enumerate(marks, 1):
        lines[n * step] = mark + b"\r\n"
    return b"".join(lines)


only_sqlite = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="the write-ahead log is SQLite's"
)


@only_sqlite
def test_a_commit_leaves_the_checkpoint_to_later():
    marks = markers(8)
    big = message(1, spread(marks, 5 * 1024 * 1024))  # past SQLite's 1,000 pages
    store_together([big])
    # Committed (another connection reads it back) but only in the log so far.
    assert bytes(Message.objects.get(queue_id=big.queue_id).content) == bytes(big.content)
    assert in_database_file(marks) == 0
    checkpoint()
    assert in_database_file(marks) >= 6


@only_sqlite
def test_the_listener_checkpoints_after_a_large_message(smtp_server, make_login, settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "CHECK_SENDER": False}
    make_login("alice@example.com", "alice's checkpoint password")
    marks = markers(8)
    body = b"Subject: big\r\n\r\n" + spread(marks, CHECKPOINT_BYTES + 100_000)
    with quitting(smtp_server.starttls()) as client:
        client.login("alice@example.com", "alice's checkpoint password")
        client.sendmail("alice@example.com", ["bob@example.org"], body)
        assert Message.objects.get().size >= CHECKPOINT_BYTES
        # The group commit's checkpoint follows the 250: the pages reach the database
        # file while the session is still open (its audit row, whose commit could
        # checkpoint too, is written only when it ends).
        deadline = time.monotonic() + 10
        while in_database_file(marks) < 6:
            assert time.monotonic() < deadline, "the message never left the log"
            time.sleep(0.05)


def test_stored_messages_reach_the_relay_signal(smtp_server, make_login, settings):
    """on_commit still announces each message (the relay's hand-off mode listens)."""
    announced: list[str] = []

    def heard(sender: Any, queue_id: str, **kwargs: Any) -> None:
        announced.append(queue_id)

    message_stored.connect(heard)
    try:
        settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "CHECK_SENDER": False}
        make_login("carol@example.com", "carol's signal password")
        with quitting(smtp_server.starttls()) as client:
            client.login("carol@example.com", "carol's signal password")
            client.sendmail("carol@example.com", ["bob@example.org"], b"Subject: x\r\n\r\nx\r\n")
            client.sendmail("carol@example.com", ["bob@example.org"], b"Subject: y\r\n\r\ny\r\n")
    finally:
        message_stored.disconnect(heard)
    assert sorted(announced) == sorted(Message.objects.values_list("queue_id", flat=True))
    assert len(announced) == 2
