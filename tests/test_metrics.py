"""``runsmtpd --metrics-listen``: Prometheus /metrics and /health, from a real process.

Each test runs runsmtpd as a subprocess (one process, or a supervisor and two
workers), talks to it with smtplib over STARTTLS, scrapes /metrics with urllib
and reads it with prometheus-client's own parser. The database is made
unreachable for real: on SQLite the directory of the path runsmtpd was given
disappears (a new connection cannot open the file), on PostgreSQL a TCP proxy in
front of the server is cut.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from kumosubmit.exporter import Exporter, HealthCheck
from tests.live import free_port, plain_blob, quitting
from tests.process import ManageProcess, command_env, database_url, manage

ALICE = "alice@example.com"
BOB = "bob@example.org"
PASSWORD = "correct horse battery"
BODY = b"Subject: metrics\r\n\r\n" + (b"x" * 70 + b"\r\n") * 30

IS_POSTGRES = connection.vendor == "postgresql"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# No HTTP proxy from the environment between the test and 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[int, str]:
    try:
        with _opener.open(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(base: str) -> Samples:
    status, text = get(f"{base}/metrics")
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def wait_for_value(base: str, name: str, expected: float, **labels: str) -> Samples:
    """Scrape until ``name`` reads ``expected`` (a session's end is seen by the server
    a moment after the client's QUIT); fail with the last value if it never does."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(base)
        if value(samples, name, **labels) == expected or time.monotonic() > deadline:
            assert value(samples, name, **labels) == expected, (name, labels)
            return samples
        time.sleep(0.05)


class Database:
    """The database as runsmtpd reaches it, which the test can make unreachable and back."""

    def __init__(self, tmp_path: Path) -> None:
        settings = connection.settings_dict
        if IS_POSTGRES:
            from tests.security.conftest import TcpProxy

            self.proxy = TcpProxy((settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432)))
            self.proxy.start()
            auth = settings["USER"] + (f":{settings['PASSWORD']}" if settings["PASSWORD"] else "")
            self.url = f"postgres://{auth}@127.0.0.1:{self.proxy.port}/{settings['NAME']}"
        else:
            # runsmtpd opens the test database through a link in a directory that can vanish.
            self.linked = tmp_path / "db"
            self.away = tmp_path / "db-away"
            self.linked.mkdir()
            (self.linked / "link.sqlite3").symlink_to(settings["NAME"])
            self.url = f"sqlite:///{self.linked / 'link.sqlite3'}"
            assert database_url() != self.url

    def cut(self) -> None:
        if IS_POSTGRES:
            self.proxy.cut()
        else:
            self.linked.rename(self.away)

    def restore(self) -> None:
        if IS_POSTGRES:
            self.proxy.restore()
        else:
            self.away.rename(self.linked)

    def close(self) -> None:
        if IS_POSTGRES:
            self.proxy.stop()


@pytest.fixture
def database(tmp_path) -> Iterator[Database]:
    db = Database(tmp_path)
    try:
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def runsmtpd(
    tmp_path: Path, pki, database: Database, workers: int
) -> Iterator[tuple[ManageProcess, int, str]]:
    """runsmtpd with --metrics-listen, listening: the process, its SMTP port, the metrics URL.

    Killed however the test ends; if it ended well, its metrics directory must be gone.
    """
    port, metrics_port = free_port(), free_port()
    env = command_env(tmp_path / "data", database.url)
    # The metrics directory runsmtpd makes goes here, to see that it is cleaned up.
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")
    process = ManageProcess(
        "runsmtpd",
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        *pki.cert_args(),
        "--shutdown-timeout",
        "5",
        "--workers",
        str(workers),
        env=env,
    )
    try:
        process.wait_for("listening on")
        yield process, port, f"http://127.0.0.1:{metrics_port}"
    finally:
        process.kill()
    assert not os.listdir(tmp_path / "tmp"), "the metrics directory was left behind"


def connect(port: int, pki) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    client.starttls(context=pki.client_context())
    client.ehlo()
    return client


def auth(client: smtplib.SMTP, password: str) -> int:
    code, _ = client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, password))
    return code


def assert_health_follows_the_database(base: str, database: Database) -> None:
    assert get(f"{base}/health") == (200, "ok\n")
    database.cut()
    try:
        status, text = get(f"{base}/health")
        assert status == 503
        assert text.startswith("database unreachable (OperationalError)"), text
    finally:
        database.restore()
    assert get(f"{base}/health") == (200, "ok\n")


def test_one_process_counts_a_session_and_reports_health(
    tmp_path, pki, make_login, database, transactional_db
):
    make_login(ALICE, PASSWORD)
    with runsmtpd(tmp_path, pki, database, workers=1) as (process, port, base):
        assert f"Metrics on {base}/metrics, health check on {base}/health." in process.output
        before = scrape(base)

        client = connect(port, pki)
        with quitting(client):
            assert value(scrape(base), "kumosubmit_connections_open", listener="starttls") == 1
            assert auth(client, "not the password") == 535
            assert auth(client, PASSWORD) == 235
            assert client.sendmail(ALICE, [BOB], BODY) == {}
        after = wait_for_value(base, "kumosubmit_connections_open", 0, listener="starttls")

        assert moved(before, after, "kumosubmit_connections_total", listener="starttls") == 1
        outcomes = {"success": 1, "failure": 1, "error": 0, "blocked": 0, "aborted": 0}
        for outcome, count in outcomes.items():
            assert (
                moved(
                    before,
                    after,
                    "kumosubmit_auth_attempts_total",
                    mechanism="PLAIN",
                    outcome=outcome,
                )
                == count
            ), outcome
        assert moved(before, after, "kumosubmit_messages_accepted_total") == 1
        assert moved(before, after, "kumosubmit_messages_accepted_bytes_total") >= len(BODY)
        # Greeting and STARTTLS; two EHLOs (one each, however many lines), MAIL, RCPT and
        # the end of DATA; then the two AUTHs, DATA and QUIT.
        replies = {"220": 2, "250": 5, "535": 1, "235": 1, "354": 1, "221": 1}
        for code, count in replies.items():
            assert moved(before, after, "kumosubmit_replies_total", code=code) == count, code
        # Both AUTHs cost an argon2 verification, in the pool, which is empty again.
        assert moved(before, after, "kumosubmit_argon2_seconds_count", operation="verify") == 2
        assert value(after, "kumosubmit_argon2_jobs", state="waiting") == 0
        assert value(after, "kumosubmit_argon2_jobs", state="running") == 0
        # run_db work, by operation: each AUTH checks the failure counters and its lane
        # (one trip) and looks the login up; the failure is counted, and its address
        # marked for spray detection; the success recorded, and its login and network
        # become known; the first MAIL FROM reads the sender policy; the message is stored.
        db_calls = {
            "throttle_and_lane": 2,
            "_find": 2,
            "_record_failure": 1,
            "record_bounded_failure": 1,
            "_record_use": 1,
            "record_success": 1,
            "load_policy": 1,
            "store_waiting": 1,
        }
        for operation, count in db_calls.items():
            assert moved(before, after, "kumosubmit_db_seconds_count", operation=operation) == count
        assert value(after, "kumosubmit_event_loop_lag_seconds_count") > 0
        assert get(f"{base}/nothing")[0] == 404

        assert_health_follows_the_database(base, database)

        # Shutting down: a balancer is told at once, while the open session finishes.
        client = connect(port, pki)
        with quitting(client):
            assert auth(client, PASSWORD) == 235
            # Used from this address within LAST_USED_PRECISION: nothing to record, and
            # no trip to the database thread for it.
            again = scrape(base)
            assert moved(after, again, "kumosubmit_db_seconds_count", operation="_find") == 1
            assert moved(after, again, "kumosubmit_db_seconds_count", operation="_record_use") == 0
            # Known now, and lately: nothing to write for the pair either.
            assert (
                moved(after, again, "kumosubmit_db_seconds_count", operation="record_success") == 0
            )
            client.mail(ALICE)
            process.signal(signal.SIGTERM)
            process.wait_for("Shutting down")
            assert get(f"{base}/health") == (503, "shutting down\n")
            client.rcpt(BOB)
            assert client.data(BODY)[0] == 250
        assert process.finish() == 0
    assert "Stopped." in process.output


def started_pids(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)", output)]


def test_workers_are_summed_and_a_dead_workers_counters_kept(
    tmp_path, pki, make_login, database, transactional_db
):
    make_login(ALICE, PASSWORD)
    with runsmtpd(tmp_path, pki, database, workers=2) as (process, port, base):
        process.wait_for("worker 1 started")
        before = scrape(base)
        for _ in range(4):
            with quitting(connect(port, pki)) as client:
                assert auth(client, PASSWORD) == 235
                assert client.sendmail(ALICE, [BOB], BODY) == {}
        after = wait_for_value(base, "kumosubmit_connections_open", 0, listener="starttls")
        assert moved(before, after, "kumosubmit_messages_accepted_total") == 4
        assert moved(before, after, "kumosubmit_connections_total", listener="starttls") == 4
        success = {"mechanism": "PLAIN", "outcome": "success"}
        assert moved(before, after, "kumosubmit_auth_attempts_total", **success) == 4

        # Sessions held open across both workers; then one worker is killed.
        idle = [smtplib.SMTP("127.0.0.1", port, timeout=10) for _ in range(6)]
        try:
            wait_for_value(base, "kumosubmit_connections_open", 6, listener="starttls")
            victim = started_pids(process.output)[0]
            os.kill(victim, signal.SIGKILL)
            process.wait_for("worker 0 started", count=2)
            survivors = 0
            for client in idle:
                try:
                    survivors += client.noop()[0] == 250
                except (smtplib.SMTPServerDisconnected, OSError):
                    pass
            # The dead worker's sessions no longer count as open...
            killed = wait_for_value(
                base, "kumosubmit_connections_open", survivors, listener="starttls"
            )
        finally:
            for client in idle:
                client.close()
        # ...but what it counted before it died still does.
        assert value(killed, "kumosubmit_messages_accepted_total") == value(
            after, "kumosubmit_messages_accepted_total"
        )
        assert moved(after, killed, "kumosubmit_connections_total", listener="starttls") == 6
        assert value(killed, "kumosubmit_worker_restarts_total") == 1

        assert_health_follows_the_database(base, database)
        process.signal(signal.SIGTERM)
        assert process.finish() == 0


def test_a_busy_metrics_port_is_a_one_line_error(tmp_path, pki, transactional_db):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        busy_port = busy.getsockname()[1]
        result = manage(
            "runsmtpd",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--metrics-listen",
            f"127.0.0.1:{busy_port}",
            *pki.cert_args(),
            env=command_env(tmp_path),
        )
    assert result.returncode == 1
    assert (
        f"Cannot listen on 127.0.0.1:{busy_port} (metrics): the address is already in use."
        in result.stderr
    ), result.stderr


def test_a_database_that_does_not_answer_is_unhealthy_in_bounded_time():
    """A silent network path: /health answers 503 in time, and requests meanwhile share
    the one check that hangs rather than each starting another."""
    release = threading.Event()
    calls = []

    def hangs() -> None:
        calls.append(1)
        release.wait(30)

    check = HealthCheck(hangs, timeout=0.2)
    try:
        assert check.problem() == "database did not answer within 0.2s"
        assert check.problem() == "database did not answer within 0.2s"
        assert len(calls) == 1
        release.set()  # the database answers again
        assert check.problem() is None
    finally:
        release.set()
        check.close()


def test_a_metric_file_still_empty_does_not_fail_the_scrape(tmp_path):
    # A process writes a counter into the directory, as a worker does.
    writer = (
        "from prometheus_client import Counter\n"
        "Counter('kumosubmit_probe', 'a probe', ['kind']).labels(kind='real').inc(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", writer],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # A worker's file as it is between being created and being sized (or for good, if
    # the worker was killed then): prometheus-client's own collector fails on it.
    (tmp_path / "counter_4242.db").touch()
    exporter = Exporter("127.0.0.1", free_port(), tmp_path)
    exporter.start()
    try:
        samples = scrape(exporter.url)
    finally:
        exporter.stop()
    assert value(samples, "kumosubmit_probe_total", kind="real") == 3
