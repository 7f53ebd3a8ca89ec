"""Messages arriving together share a commit; each still hears 250 only after it.

The listener's database thread is held busy (as a slow disk or a long
transaction would) while several sessions end DATA, so their messages wait
together; on release they are stored, in one transaction on top of the
first, and every client gets its 250. A message the database refuses inside
a shared transaction costs only its own session a 451. On SQLite, messages
that arrive while another process has its turn at the database join the
batch that waits for it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from kumosubmit.db import run_db
from kumosubmit.spool import get_spool
from kumosubmit.spool.models import Message
from tests.live import LiveSMTPServer, quitting

ALICE = "alice@example.com"
PASSWORD = "alice's spool password 1"
POISON = "poison@example.com"
SESSIONS = 8


def hold_database_thread(server: LiveSMTPServer) -> threading.Event:
    """Keep the listener's database thread busy until the returned event is set."""
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(30)

    asyncio.run_coroutine_threadsafe(run_db(hold), server.loop)
    assert busy.wait(10)
    return release


def wait_pending(server: LiveSMTPServer, count: int, timeout: float = 10) -> None:
    """Wait until ``count`` messages wait for the spool (sessions in other threads)."""

    async def pending() -> int:
        return get_spool().pending()

    deadline = time.monotonic() + timeout
    while server._run(pending()) < count:
        assert time.monotonic() < deadline, "the messages did not reach the spool"
        time.sleep(0.01)


@pytest.fixture
def sessions(smtp_server, make_login, settings) -> Iterator[list[smtplib.SMTP]]:
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "CHECK_SENDER": False,
        # The sending limits reserve at MAIL FROM through the database thread, which these
        # tests hold so that DATA waits: they are left out here (tests/test_sendlimits*.py).
        "BUILTIN_HOOKS": {
            "smtp_server_mail_from": [
                "kumosubmit.policy.limits.mail_from",
                "kumosubmit.policy.senders.mail_from",
            ],
            "smtp_server_rcpt_to": ["kumosubmit.policy.limits.rcpt_to"],
        },
    }
    make_login(ALICE, PASSWORD)
    clients = []
    for _ in range(SESSIONS):  # logged in first: AUTH needs the database thread too
        client = smtp_server.starttls()
        client.login(ALICE, PASSWORD)
        clients.append(client)
    yield clients
    for client in clients:
        with quitting(client):
            pass


def hold_writer_turn(server: LiveSMTPServer) -> threading.Event:
    """Hold the SQLite writers' turn, as another worker process committing would."""
    fd = os.open(f"{connection.settings_dict['NAME']}-writer.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    release = threading.Event()

    def hand_on() -> None:
        release.wait(30)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    threading.Thread(target=hand_on, daemon=True).start()
    return release


def send_all(
    smtp_server: LiveSMTPServer,
    clients: list[smtplib.SMTP],
    senders: list[str],
    hold: Callable[[LiveSMTPServer], threading.Event] = hold_database_thread,
) -> list[int]:
    """End DATA on every session while ``hold`` keeps the database; each final reply code."""

    def send(client: smtplib.SMTP, sender: str) -> int:
        try:
            client.sendmail(sender, ["bob@example.org"], f"Subject: from {sender}\r\n\r\nhi\r\n")
            return 250
        except smtplib.SMTPDataError as error:
            return error.smtp_code

    release = hold(smtp_server)
    with ThreadPoolExecutor(len(clients)) as pool:
        replies = [pool.submit(send, client, s) for client, s in zip(clients, senders, strict=True)]
        try:
            wait_pending(smtp_server, len(clients))
            assert not any(reply.done() for reply in replies), "a 250 before the commit"
        finally:
            release.set()
        return [reply.result(30) for reply in replies]


def test_messages_arriving_together_share_a_commit(smtp_server, sessions):
    senders = [f"sender-{n}@example.com" for n in range(SESSIONS)]
    assert send_all(smtp_server, sessions, senders) == [250] * SESSIONS
    assert sorted(Message.objects.values_list("mail_from", flat=True)) == sorted(senders)
    if connection.vendor == "postgresql":
        # Rows written by one transaction share its id (xmin): the first message's
        # transaction, then one for all that waited behind it.
        with connection.cursor() as cursor:
            table = Message._meta.db_table
            cursor.execute(f"SELECT count(DISTINCT xmin::text) FROM {table}")  # noqa: S608
            assert cursor.fetchone()[0] <= 2


@pytest.mark.skipif(connection.vendor != "sqlite", reason="only SQLite's writers take turns")
def test_messages_arriving_during_another_writers_turn_join_one_batch(smtp_server, sessions):
    senders = [f"sender-{n}@example.com" for n in range(SESSIONS)]
    # The first message's job is already waiting for the turn when the others come.
    assert send_all(smtp_server, sessions, senders, hold_writer_turn) == [250] * SESSIONS
    assert sorted(Message.objects.values_list("mail_from", flat=True)) == sorted(senders)
    # One INSERT, after the turn came: every row has that statement's received_at.
    assert Message.objects.values("received_at").distinct().count() == 1


@pytest.fixture
def poison_trigger(transactional_db) -> Iterator[None]:
    """The database itself refuses any message from POISON (a trigger)."""
    table = Message._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER poison BEFORE INSERT ON {table} "
                f"WHEN NEW.mail_from = '{POISON}' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
            )
        else:
            cursor.execute(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.mail_from = '{POISON}' THEN RAISE EXCEPTION 'poisoned'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER poison BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION poison()"
            )
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("DROP TRIGGER poison")
        else:
            cursor.execute(f"DROP TRIGGER poison ON {table}")
            cursor.execute("DROP FUNCTION poison()")


def test_a_refused_message_costs_only_its_own_session(smtp_server, sessions, poison_trigger):
    senders = [f"sender-{n}@example.com" for n in range(SESSIONS)]
    senders[SESSIONS // 2] = POISON
    codes = send_all(smtp_server, sessions, senders)
    assert codes == [451 if sender == POISON else 250 for sender in senders]
    stored = sorted(Message.objects.values_list("mail_from", flat=True))
    assert stored == sorted(s for s in senders if s != POISON)
