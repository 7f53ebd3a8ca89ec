"""``runrelay`` as real processes: --once, SIGTERM, kill -9 mid-batch, two workers on PostgreSQL."""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter

import pytest

from kumosubmit.relay.worker import CLAIM_AHEAD
from kumosubmit.spool.models import Message, MessageState
from tests.process import ManageProcess, command_env, manage
from tests.relay.conftest import IS_POSTGRES


@pytest.fixture
def relay_env(tmp_path, transactional_db):
    """The environment of a runrelay process on the test database, with these RELAY settings."""

    def env(**relay: object) -> dict[str, str]:
        environment = command_env(tmp_path / "data")
        environment["DJANGO_SETTINGS_MODULE"] = "tests.relay.process_settings"
        environment["KUMOSUBMIT_TEST_RELAY"] = json.dumps(relay)
        return environment

    return env


@pytest.fixture
def runrelay():
    """Start runrelay processes; any still running at the end are killed."""
    started: list[ManageProcess] = []

    def start(*args: str, env: dict[str, str]) -> ManageProcess:
        process = ManageProcess("runrelay", *args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def delivered_count(output: str) -> int:
    match = re.search(r"Stopped: (?:.*?)(\d+) delivered", output)
    return int(match.group(1)) if match else 0


def test_once_delivers_what_is_due_and_exits_0(sink, relay_env, queue_messages):
    queue_messages(5)
    result = manage(
        "runrelay", "--once", "--upstream", sink.address, "--tls", "none", env=relay_env()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"relaying to {sink.address} (none, 4 connection(s))" in result.stdout
    assert "Stopped: 5 delivered." in result.stdout
    assert len(sink.received) == 5
    assert set(Message.objects.values_list("state", flat=True)) == {MessageState.DELIVERED}


def test_settings_are_used_and_options_override_them(sink, relay_env, queue_messages):
    queue_messages(2)
    env = relay_env(UPSTREAM="127.0.0.1:1", TLS="none", WORKERS=3)
    result = manage("runrelay", "--once", "--upstream", sink.address, "--workers", "1", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"relaying to {sink.address} (none, 1 connection(s))" in result.stdout
    assert len(sink.received) == 2


def test_once_with_nothing_due_exits_0(sink, relay_env):
    result = manage("runrelay", "--once", env=relay_env(UPSTREAM=sink.address, TLS="none"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stopped: nothing was due." in result.stdout


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((), "No upstream MTA: set KUMOSUBMIT['RELAY']['UPSTREAM'] or --upstream HOST:PORT."),
        (("--upstream", "mta.example"), "'mta.example' is not 'HOST:PORT'."),
        (
            ("--upstream", "192.0.2.25:25", "--tls", "none"),
            "TLS 'none' is only for an MTA on this host",
        ),
        (("--upstream", "127.0.0.1:25", "--workers", "0"), "--workers must be 1 or more."),
    ],
)
def test_unusable_upstreams_are_one_line_errors(relay_env, args, error):
    result = manage("runrelay", "--once", *args, env=relay_env())
    assert result.returncode == 1
    assert error in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_finishes_the_delivery_in_progress_and_gives_back_the_rest(
    sink, relay_env, runrelay, queue_messages
):
    sink.data_delay = 0.5
    queue_messages(6)
    process = runrelay(
        "--upstream", sink.address, "--tls", "none", "--workers", "1", env=relay_env()
    )
    process.wait_for("Quit with CONTROL-C.")
    # The first delivered and recorded; the second in the connection, more claimed.
    held = CLAIM_AHEAD  # per connection
    wait_until(
        lambda: (
            Counter(Message.objects.values_list("state", flat=True))
            == {
                MessageState.DELIVERED: 1,
                MessageState.DELIVERING: held,
                MessageState.QUEUED: 5 - held,
            }
        ),
        timeout=10,
        what="one message delivered, the next ones claimed",
    )
    process.signal(signal.SIGTERM)
    assert process.finish() == 0, process.output
    assert f"gave back {held - 1} message(s) to the queue" in process.output, process.output
    states = Counter(Message.objects.values_list("state", flat=True))
    delivered = states[MessageState.DELIVERED]
    assert delivered == len(sink.received) >= 1
    # Nothing is left leased to a worker that is gone: the rest is due again at once.
    assert states[MessageState.QUEUED] == 6 - delivered
    assert not Message.objects.exclude(lease_owner="").exists()


def test_kill_9_mid_batch_loses_nothing(sink, relay_env, runrelay, queue_messages):
    """A worker killed mid-batch leaves its messages to the next after its lease: at least once."""
    sink.data_delay = 0.02
    messages = queue_messages(200)
    env = relay_env(UPSTREAM=sink.address, TLS="none", WORKERS=2, LEASE=2, POLL_INTERVAL=0.2)
    doomed = runrelay(env=env)
    doomed.wait_for("Quit with CONTROL-C.")
    sink.wait_for(40, timeout=30)
    doomed.proc.kill()  # SIGKILL: no clean-up of any kind
    doomed.finish()
    held = Message.objects.filter(state=MessageState.DELIVERING).count()
    assert held > 0, "the worker held nothing when it died"
    assert Message.objects.exclude(state=MessageState.DELIVERED).exists()

    survivor = runrelay(env=env)
    wait_until(
        lambda: Message.objects.filter(state=MessageState.DELIVERED).count() == 200,
        timeout=30,
        what="every message to be delivered",
    )
    survivor.signal(signal.SIGTERM)
    assert survivor.finish() == 0, survivor.output
    assert "ran out; delivering it again" in survivor.output

    counts = Counter(sink.message_ids())
    assert set(counts) == {f"<{m.queue_id}@test.invalid>" for m in messages}
    # Only what the dead worker had in flight (claimed: CLAIM_AHEAD per connection at
    # most, of which one per connection was being sent) may have reached the sink twice.
    assert sum(n - 1 for n in counts.values()) <= min(held, 2 * CLAIM_AHEAD)


@pytest.mark.skipif(not IS_POSTGRES, reason="several workers need PostgreSQL (SKIP LOCKED)")
def test_two_workers_on_postgresql_deliver_a_thousand_messages_once(
    sink, relay_env, runrelay, queue_messages
):
    sink.data_delay = 0.002
    messages = queue_messages(1000)
    env = relay_env(UPSTREAM=sink.address, TLS="none", WORKERS=2)
    workers = [runrelay("--once", env=env), runrelay("--once", env=env)]
    for worker in workers:
        assert worker.finish(timeout=60) == 0, worker.output
    counts = Counter(sink.message_ids())
    assert set(counts) == {f"<{m.queue_id}@test.invalid>" for m in messages}
    assert max(counts.values()) == 1, "a message was delivered twice"
    shares = [delivered_count(worker.output) for worker in workers]
    assert sum(shares) == 1000
    assert min(shares) > 0, f"one worker did all the work: {shares}"
    assert set(Message.objects.values_list("state", flat=True)) == {MessageState.DELIVERED}
