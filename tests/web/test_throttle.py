"""The web sign-in throttle through real HTTP, and its parts.

A real ``manage.py runserver`` process on the test database, reached from
several loopback source addresses: the server counts each as a client, as it
would count hosts on the internet (kumosubmit/web/throttle.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.utils import timezone

from kumosubmit.credentials.models import AuthFailureCounter
from kumosubmit.web import throttle
from kumosubmit.web.addresses import client_address
from tests.live import free_port
from tests.process import ManageProcess, command_env
from tests.web.conftest import SITE_PASSWORD
from tests.web.httpclient import SiteClient

WRONG = "not the site password"


@pytest.fixture
def runserver(tmp_path: Path, transactional_db: None) -> Iterator[int]:
    """``manage.py runserver`` (tests.settings: no delay) on the test database; its port."""
    port = free_port()
    env = command_env(tmp_path / "data")
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    process = ManageProcess("runserver", f"127.0.0.1:{port}", "--noreload", env=env)
    try:
        process.wait_for(f"http://127.0.0.1:{port}/")
        yield port
    finally:
        process.kill()


@pytest.mark.timeout(180)
def test_thirty_wrong_passwords_lock_out_their_address_not_the_owner(runserver, make_user):
    make_user("alice")
    attacker = SiteClient(runserver, "127.0.0.2")
    for _ in range(30):
        assert attacker.sign_in("alice", WRONG) == 200
    # Ten failures blocked the address (IP_BLOCK_AFTER); the rest were refused unchecked.
    address = AuthFailureCounter.objects.get(kind="web_address", value="127.0.0.2")
    assert address.failures == 10 and address.is_blocked()
    # The right password from there is refused now, and the page says why.
    status, _, page = SiteClient(runserver, "127.0.0.2").submit(
        "/accounts/login/", {"username": "alice", "password": SITE_PASSWORD}
    )
    assert status == 200 and "Too many failed sign-ins" in page
    # From another address the owner signs in.
    owner = SiteClient(runserver, "127.0.0.9")
    assert owner.sign_in("alice", SITE_PASSWORD) == 302
    assert owner.request("GET", "/credentials/")[0] == 200


@pytest.mark.timeout(180)
def test_spraying_from_many_addresses_blocks_the_user_only_where_it_failed(runserver, make_user):
    make_user("alice")
    for n in (2, 3):
        client = SiteClient(runserver, f"127.0.0.{n}")
        for _ in range(10):
            assert client.sign_in("alice", WRONG) == 200
    # 20 failures for alice (LOGIN_BLOCK_AFTER): blocked from those two addresses...
    assert AuthFailureCounter.objects.get(kind="web_login", value="alice").is_blocked()
    # ...a third that tried once gets its one guess refused and is blocked for her too...
    third = SiteClient(runserver, "127.0.0.4")
    assert third.sign_in("alice", WRONG) == 200
    assert third.sign_in("alice", SITE_PASSWORD) == 200
    # ...and her own address, which never failed, still works; so does the admin's form.
    assert SiteClient(runserver, "127.0.0.5").sign_in("alice", SITE_PASSWORD) == 302
    User.objects.filter(username="alice").update(is_staff=True)
    assert (
        SiteClient(runserver, "127.0.0.6").sign_in("alice", SITE_PASSWORD, "/admin/login/") == 302
    )


@pytest.mark.timeout(180)
def test_the_admin_sign_in_is_counted_with_the_others(runserver, make_user):
    make_user("alice")
    client = SiteClient(runserver, "127.0.0.7")
    for _ in range(5):
        assert client.sign_in("alice", WRONG, "/admin/login/") == 200
    for _ in range(5):
        assert client.sign_in("alice", WRONG) == 200
    status, _, page = client.submit(
        "/admin/login/", {"username": "alice", "password": SITE_PASSWORD}
    )
    assert status == 200 and "Too many failed sign-ins" in page


@pytest.mark.timeout(180)
def test_a_forwarded_header_from_anyone_is_ignored(runserver, make_user):
    make_user("alice")
    client = SiteClient(runserver, "127.0.0.8")
    for n in range(10):
        forged = {"X-Forwarded-For": f"198.51.100.{n}", "X-Real-IP": f"198.51.100.{n}"}
        assert client.sign_in("alice", WRONG, headers=forged) == 200
    # No WEB_TRUSTED_PROXIES: every guess counted against the peer, whatever it claimed.
    counters = AuthFailureCounter.objects.filter(kind="web_address")
    assert [(c.value, c.failures, c.is_blocked()) for c in counters] == [("127.0.0.8", 10, True)]


def test_the_password_change_form_is_throttled(db, settings, make_user):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "WEB_BRUTE_FORCE": {"DELAY": 0, "IP_BLOCK_AFTER": 3},
    }
    user = make_user("alice")
    client = Client(REMOTE_ADDR="127.0.0.3")
    client.force_login(user)
    form = {"new_password1": "a new password 42", "new_password2": "a new password 42"}
    for _ in range(3):
        response = client.post("/accounts/password_change/", {"old_password": WRONG, **form})
        assert response.status_code == 200
    response = client.post("/accounts/password_change/", {"old_password": SITE_PASSWORD, **form})
    assert "Too many failed sign-ins" in response.content.decode()
    user.refresh_from_db()
    assert user.check_password(SITE_PASSWORD)
    # The admin's "change password" is this same page.
    assert client.get("/admin/password_change/")["Location"] == "/accounts/password_change/"


def test_delays_grow_with_the_failures_of_an_address(db, settings, make_user):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "WEB_BRUTE_FORCE": {"DELAY": 1.0, "MAX_DELAY": 2.0, "IP_BLOCK_AFTER": None},
    }
    # A hash that costs nothing, so the times are the delays (PBKDF2 varies with the load).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    make_user("alice")
    client = Client(REMOTE_ADDR="127.0.0.4")
    took = []
    for _ in range(3):
        start = time.monotonic()
        client.post("/accounts/login/", {"username": "alice", "password": WRONG})
        took.append(time.monotonic() - start)
    # 1 s, then 2 s, then 2 s (MAX_DELAY), each after the request's own time.
    assert took[0] >= 1.0 and took[1] >= 2.0 and took[2] >= 2.0, took
    assert took[1] - took[0] > 0.6 and abs(took[2] - took[1]) < 0.6, took
    # A success forgets the address's count: the next failure waits the first delay again.
    client.post("/accounts/login/", {"username": "alice", "password": SITE_PASSWORD})
    assert not AuthFailureCounter.objects.filter(kind="web_address").exists()
    assert AuthFailureCounter.objects.get(kind="web_login").failures == 3


def test_blocks_show_in_the_one_admin_list_and_can_be_lifted(db, settings, make_user):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "WEB_BRUTE_FORCE": {"DELAY": 0, "IP_BLOCK_AFTER": 1},
    }
    make_user("alice")
    Client(REMOTE_ADDR="127.0.0.5").post(
        "/accounts/login/", {"username": "alice", "password": WRONG}
    )
    smtp = AuthFailureCounter.objects.create(kind="address", value="192.0.2.1", failures=1)
    web = AuthFailureCounter.objects.get(kind="web_address", value="127.0.0.5")
    assert web.is_blocked()
    admin = User.objects.create_superuser("root", "root@example.org", SITE_PASSWORD)
    client = Client()
    client.force_login(admin)
    page = client.get("/admin/kumosubmit/authfailurecounter/").content.decode()
    assert "web: client address" in page and "127.0.0.5" in page and "192.0.2.1" in page
    client.post(
        "/admin/kumosubmit/authfailurecounter/",
        {"action": "lift_blocks", "_selected_action": [web.pk, smtp.pk]},
    )
    web.refresh_from_db()
    assert not web.is_blocked() and web.failures == 0
    response = Client(REMOTE_ADDR="127.0.0.5").post(
        "/accounts/login/", {"username": "alice", "password": SITE_PASSWORD}
    )
    assert response.status_code == 302


@pytest.mark.parametrize(
    ("proxies", "remote", "forwarded", "expected"),
    [
        ([], "192.0.2.7", "203.0.113.5", "192.0.2.7"),
        (["10.0.0.0/8"], "192.0.2.7", "203.0.113.5", "192.0.2.7"),
        (["10.0.0.0/8"], "10.0.0.2", "203.0.113.5", "203.0.113.5"),
        # Anything the client put before the proxies' own hops is not believed.
        (["10.0.0.0/8"], "10.0.0.2", "198.51.100.1, 203.0.113.5, 10.0.0.3", "203.0.113.5"),
        (["10.0.0.0/8"], "10.0.0.2", "not-an-address", "10.0.0.2"),
        (["10.0.0.0/8"], "10.0.0.2", "", "10.0.0.2"),
        (["::1"], "::1", "2001:db8::5", "2001:db8::5"),
    ],
)
def test_the_client_address_comes_only_from_trusted_proxies(
    settings, proxies, remote, forwarded, expected
):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "WEB_TRUSTED_PROXIES": proxies}
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_address(request) == expected


def test_the_settings_are_checked(settings):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "WEB_BRUTE_FORCE": {"DELAY": -1, "BOGUS": 1},
        "WEB_TRUSTED_PROXIES": ["10.0.0.0/33"],
    }
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
    ids = [message.id for message in run_checks()]
    assert ids.count("kumosubmit.E070") == 2
    assert "kumosubmit.E071" in ids and "kumosubmit.W070" in ids


def test_pruneaudit_keeps_web_counters_by_the_web_rules(db, settings):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "BRUTE_FORCE": {"DELAY": 0, "WINDOW": 60},
        "WEB_BRUTE_FORCE": {"DELAY": 0, "WINDOW": 3600},
    }
    ten_minutes_ago = timezone.now() - timedelta(minutes=10)
    for kind in ("address", "web_address"):
        AuthFailureCounter.objects.create(
            kind=kind, value="192.0.2.1", failures=3, last_failure_at=ten_minutes_ago
        )
    call_command("pruneaudit", stdout=StringIO())
    assert list(AuthFailureCounter.objects.values_list("kind", flat=True)) == ["web_address"]


def test_the_policy_follows_the_settings(settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "WEB_BRUTE_FORCE": {"IP_BLOCK_AFTER": 4}}
    policy = throttle.policy()
    assert policy.ip_block_after == 4 and policy.login_block_after == 20
