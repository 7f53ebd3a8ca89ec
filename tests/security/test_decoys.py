"""Decoy logins (issue 20): tried once, the address is blocked everywhere, with no argon2 work."""

from __future__ import annotations

import smtplib
import statistics
import time

import pytest
from django.test import Client

from kumosubmit.credentials.models import AuthFailureCounter, SmtpLogin
from kumosubmit.spool.models import Message
from tests.live import free_port, plain_blob, quitting
from tests.process import ManageProcess, command_env
from tests.test_metrics import scrape, value

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
DECOY = "postmaster-admin@example.com"


@pytest.fixture
def decoy(make_login):
    login = make_login(DECOY, "the decoy has a password too")
    login.is_decoy = True
    login.save()
    return login


def start_runsmtpd(tmp_path, pki, name: str) -> tuple[ManageProcess, int, str]:
    port, metrics_port = free_port(), free_port()
    env = command_env(tmp_path / name)
    env["DJANGO_SETTINGS_MODULE"] = "tests.decoy_process_settings"
    process = ManageProcess(
        "runsmtpd",
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        *pki.cert_args(),
        "--workers",
        "1",
        "--shutdown-timeout",
        "5",
        env=env,
    )
    process.wait_for("listening on")
    return process, port, f"http://127.0.0.1:{metrics_port}"


def auth(port: int, pki, authc: str, password: str, source: str = "127.0.0.7") -> int:
    client = smtplib.SMTP(
        "127.0.0.1", port, local_hostname="client.test", timeout=10, source_address=(source, 0)
    )
    with quitting(client):
        client.starttls(context=pki.client_context())
        client.ehlo()
        return client.docmd("AUTH", "PLAIN " + plain_blob("", authc, password))[0]


def verifications(base: str) -> float:
    return value(scrape(base), "kumosubmit_argon2_seconds_count", operation="verify")


def test_a_decoy_blocks_the_address_on_every_process_with_no_verification(
    transactional_db, tmp_path, pki, make_login, decoy, secret_watch
):
    make_login(ALICE, PASSWORD)
    first, first_port, first_metrics = start_runsmtpd(tmp_path, pki, "first")
    second, second_port, second_metrics = start_runsmtpd(tmp_path, pki, "second")
    try:
        # Each process has verified nothing yet; a real login works from elsewhere.
        assert auth(second_port, pki, ALICE, PASSWORD, source="127.0.0.8") == 235
        before = (verifications(first_metrics), verifications(second_metrics))
        secret_watch.add("any guess at all")
        assert auth(first_port, pki, DECOY, "any guess at all") == 535  # as a wrong password
        # The address is now blocked for every login, on the other process too ...
        assert auth(second_port, pki, ALICE, PASSWORD) == 421
        assert auth(first_port, pki, ALICE, PASSWORD) == 421
        # ... and neither the decoy nor the blocked attempts cost an argon2 verification.
        assert (verifications(first_metrics), verifications(second_metrics)) == before
        # Other addresses are not affected.
        assert auth(second_port, pki, ALICE, PASSWORD, source="127.0.0.8") == 235
    finally:
        first.kill()
        second.kill()
    row = AuthFailureCounter.objects.get(kind="address", value="127.0.0.7")
    assert row.blocked_until is not None
    # The admins were alerted through kumosubmit's own queue.
    deadline = time.monotonic() + 5
    while not Message.objects.filter(rcpt_tos=["ops@example.com"]).exists():
        assert time.monotonic() < deadline, "no alert stored for the admins"
        time.sleep(0.1)
    alert = Message.objects.get(rcpt_tos=["ops@example.com"])
    assert f"The decoy login {DECOY} was tried" in bytes(alert.content).decode()
    assert "127.0.0.7" in bytes(alert.content).decode()


def test_a_decoy_is_answered_like_a_wrong_password(
    smtp_server, settings, make_login, decoy, secret_watch
):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "ARGON2": {"time_cost": 3, "memory_cost": 32768, "parallelism": 1},
        "BRUTE_FORCE": {"DELAY": 0, "IP_BLOCK_AFTER": None, "LOGIN_BLOCK_AFTER": None},
        "MAX_CONNECTIONS_PER_IP": 1000,
    }
    make_login(ALICE, PASSWORD)
    secret_watch.add("wrong password here")
    times: dict[str, list[float]] = {"wrong": [], "decoy": []}
    for n in range(8):
        for kind, authc, source in (
            ("wrong", ALICE, "127.0.0.20"),
            ("decoy", DECOY, f"127.0.1.{n + 1}"),  # each decoy attempt blocks its address
        ):
            with quitting(
                smtplib.SMTP(
                    smtp_server.host,
                    smtp_server.starttls_port,
                    local_hostname="client.test",
                    timeout=10,
                    source_address=(source, 0),
                )
            ) as client:
                client.starttls(context=smtp_server.pki.client_context())
                client.ehlo()
                started = time.monotonic()
                code, text = client.docmd(
                    "AUTH", "PLAIN " + plain_blob("", authc, "wrong password here")
                )
                times[kind].append(time.monotonic() - started)
                assert (code, text) == (535, b"5.7.8 Authentication credentials invalid")
    wrong, tried = statistics.median(times["wrong"][2:]), statistics.median(times["decoy"][2:])
    assert 0.5 < tried / wrong < 2.0, (tried, wrong)


def test_decoys_never_show_on_the_self_service_pages(transactional_db, decoy):
    from django.contrib.auth.models import User

    user = User.objects.create_user("owner", "owner@example.com", "owner pass 12345")
    decoy.owner = user
    decoy.save()
    shown = SmtpLogin.objects.create(username="real@example.com", owner=user)
    client = Client()
    client.force_login(user)
    page = client.get("/credentials/").content.decode()
    assert "real@example.com" in page and DECOY not in page
    assert client.get(f"/credentials/{decoy.pk}/").status_code == 404
    assert client.get(f"/credentials/{shown.pk}/").status_code == 200
