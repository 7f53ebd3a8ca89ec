"""The issue's test: two ``runsmtpd`` processes sharing one database (or one Redis), a login
limited to 20/minute, 25 messages sent through both in turn: exactly 20 get 250."""

from __future__ import annotations

import json
import smtplib
import time
from contextlib import ExitStack

import pytest
import redis
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import F

from kumosubmit.sendlimits.models import SendLimitState
from kumosubmit.spool.models import Message
from tests.live import free_port, quitting
from tests.process import ManageProcess, command_env
from tests.test_metrics import scrape, value

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
BODY = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: t\r\n\r\nbody\r\n"


@pytest.fixture(params=["database", "redis"])
def shared(request):
    """What the two processes share the counts through."""
    if request.param == "database":
        return request.param, {}
    server = request.getfixturevalue("redis_server")
    server.flush()
    return request.param, {
        "KUMOSUBMIT_TEST_REDIS": server.url,
        "KUMOSUBMIT_TEST_SETTINGS": json.dumps(
            {
                "SEND_LIMITS_BACKEND": "kumosubmit.sendlimits.backends.CacheBackend",
                "SEND_LIMITS_CACHE": "sendlimits",
            }
        ),
    }


@pytest.fixture
def two_servers(tmp_path, pki, transactional_db, shared):
    if connection.vendor == "sqlite":
        pytest.skip("two processes on one database: run with DATABASE_URL on PostgreSQL")
    servers = []
    with ExitStack() as stack:
        for n in range(2):
            port, metrics_port = free_port(), free_port()
            env = command_env(tmp_path / f"s{n}")
            env.update(shared[1], DJANGO_SETTINGS_MODULE="tests.process_settings")
            process = ManageProcess(
                "runsmtpd",
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
                *pki.cert_args(),
                "--workers",
                "1",
                env=env,
            )
            stack.callback(process.kill)
            process.port = port
            process.metrics = f"http://127.0.0.1:{metrics_port}"
            servers.append(process)
        for process in servers:
            process.wait_for("listening on")
        yield servers


def connect(port, pki):
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
    client.starttls(context=pki.client_context())
    client.login(ALICE, PASSWORD)
    return client


def send(client):
    code, text = client.mail(ALICE)
    if code == 250:
        code, text = client.rcpt("bob@example.org")
        if code == 250:
            code, text = client.data(BODY)
        else:
            client.rset()
    return code, text.decode()


def test_two_processes_share_one_allowance(two_servers, shared, pki, make_login):
    owner = get_user_model().objects.create_user("ann", "ann@example.org", "x")
    login = make_login(ALICE, PASSWORD)
    login.owner = owner
    login.message_limits = ["20/minute"]
    login.save()
    first, second = (connect(server.port, pki) for server in two_servers)
    with quitting(first) as a, quitting(second) as b:
        started = time.monotonic()
        replies = [send((a, b)[n % 2]) for n in range(25)]
        took = time.monotonic() - started
        # 20/minute refills one every 3 s: the 25 sends must come within that to be exact.
        assert took < 3, f"the sends took {took:.1f} s"
        assert [code for code, _ in replies] == [250] * 20 + [451] * 5
        for _code, text in replies[20:]:
            assert text.startswith("4.7.1 Sending limit of this login reached")
            assert "(20 messages per minute); try again in" in text
        assert Message.objects.filter(authn_id=ALICE).count() == 20
        # Both processes refused (3 and 2 of the 5), each counted in its /metrics; the
        # owner heard of it once.
        for server, refused in zip(two_servers, (3, 2), strict=True):
            samples = scrape(server.metrics)
            assert value(samples, "kumosubmit_send_limited_total", kind="messages") == refused
            assert value(samples, "kumosubmit_send_limited_total", kind="recipients") == 0
        assert Message.objects.filter(meta__kumosubmit_notice="send_limit").count() == 1

        # The allowance refills at the rule's rate: one message every 3 s, no burst.
        time.sleep(3.2)
        assert [send(b)[0], send(a)[0]] == [250, 451]

        # A window later (the clock moved on by rewinding the stored state a minute), a
        # full burst again, through either process, and not one more.
        rewind_a_minute(shared)
        replies = [send((a, b)[n % 2])[0] for n in range(21)]
        assert replies == [250] * 20 + [451]
    assert Message.objects.filter(authn_id=ALICE).count() == 41
    # Still within the first notice's window: no second one.
    assert Message.objects.filter(meta__kumosubmit_notice="send_limit").count() == 1


def rewind_a_minute(shared):
    """Move every bucket's state a minute into the past, as if a minute had gone by."""
    kind, env = shared
    if kind == "database":
        assert SendLimitState.objects.update(tat=F("tat") - 60_000_000)
        return
    client = redis.Redis.from_url(env["KUMOSUBMIT_TEST_REDIS"])
    keys = client.keys("*kumosubmit:limit:*")
    assert keys
    for key in keys:
        client.set(key, int(client.get(key)) - 60_000_000, keepttl=True)
