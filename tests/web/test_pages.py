"""The self-service pages through Django's test client: who sees what, forms, CSRF, caching."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials import hashing
from kumosubmit.credentials.models import (
    APP_PASSWORD_ALPHABET,
    AppPassword,
    SmtpLogin,
    app_password_id,
    create_app_password,
)
from tests.web.conftest import SITE_PASSWORD

ALICE = "alice@example.com"
APP_PASSWORD = re.compile(r"ksub_([a-z2-7]{8})_([a-z2-7]{26})")


def url(name: str, *args: object) -> str:
    return reverse(f"credentials:{name}", args=args)


def created_password(response) -> str:
    match = re.search(rb'<code id="new-app-password"[^>]*>([^<]*)</code>', response.content)
    assert match, response.content
    return match.group(1).decode()


@pytest.fixture
def alice(signed_in, owned_login, secret_watch):
    """Alice, signed in, and her login."""
    user, client = signed_in("alice")
    return user, client, owned_login(user, ALICE)


# -- signing in -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/credentials/", "/credentials/1/", "/credentials/1/password/"])
def test_anonymous_visitors_are_sent_to_sign_in(client, db, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={path}"


def test_home_leads_to_the_logins(client, db):
    assert client.get("/")["Location"] == "/credentials/"


def test_sign_in_page_and_signing_in(client, make_user):
    make_user("alice")
    page = client.get("/accounts/login/?next=/credentials/")
    assert page.status_code == 200
    assert b'<label for="id_username">' in page.content
    assert b'name="csrfmiddlewaretoken"' in page.content
    wrong = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 200
    assert b"Please enter a correct username and password" in wrong.content
    right = client.post(
        "/accounts/login/",
        {"username": "alice", "password": SITE_PASSWORD, "next": "/credentials/"},
    )
    assert right["Location"] == "/credentials/"


def test_sign_out_is_a_post(alice):
    _, client, _ = alice
    assert client.get(url("index")).status_code == 200
    response = client.post("/accounts/logout/")
    assert response["Location"] == "/accounts/login/"
    assert client.get(url("index")).status_code == 302


# -- what a user sees --------------------------------------------------------------------


def test_the_list_shows_only_the_users_own_logins(alice, signed_in, owned_login, secret_watch):
    _, client, login = alice
    bob, _ = signed_in("bob")
    owned_login(bob, "bob@example.com")
    create_app_password(login, "Phone")
    revoked, _ = create_app_password(login, "Old phone")
    revoked.revoke()
    response = client.get(url("index"))
    assert response.status_code == 200
    assert [login.username for login in response.context["logins"]] == [ALICE]
    assert response.context["logins"][0].live_app_passwords == 1
    assert b"bob@example.com" not in response.content
    assert b"1 in use" in response.content


def test_a_user_without_logins_is_told_how_to_get_one(signed_in):
    _, client = signed_in("carol")
    response = client.get(url("index"))
    assert b"No SMTP login is linked to your account yet" in response.content


def test_the_login_page_shows_app_passwords_and_their_last_use(alice):
    _, client, login = alice
    live, _ = create_app_password(login, "Phone")
    AppPassword.objects.filter(pk=live.pk).update(
        last_used_at=timezone.now(), last_used_from="2001:db8::7"
    )
    expired, _ = create_app_password(login, "Tablet", timezone.now() - timedelta(days=1))
    response = client.get(url("login", login.pk))
    assert response.status_code == 200
    assert response.context["app_passwords"] == [live]
    assert response.context["inactive_app_passwords"] == [expired]
    content = response.content.decode()
    assert "2001:db8::7" in content
    assert live.hint in content and "expired" in content
    assert live.password_hash not in content


def test_recent_sign_ins_come_from_the_audit_table(alice, make_login):
    _, client, login = alice
    phone, _ = create_app_password(login, "Phone")
    make_login("mallory@example.com", "mallory's own password")
    now = timezone.now()

    def record(n: int, authc: str, outcome: str, credentials: list, address: str) -> None:
        attempts = [{"outcome": outcome, "authc": authc}]
        ConnectionRecord.objects.create(
            conn_id=f"c{n}",
            started_at=now - timedelta(minutes=n),
            ended_at=now,
            listener="starttls",
            peer_address=address,
            authc=authc,
            auth_outcome=outcome,
            meta={"auth_attempts": attempts, "auth_credentials": credentials},
        )

    used = {"kind": "app_password", "app_password_id": phone.pk, "label": "Phone", "attempt": 0}
    record(1, ALICE, "success", [{**used, "result": "accepted"}], "192.0.2.1")
    record(2, ALICE, "failure", [{**used, "result": "revoked"}], "192.0.2.2")
    record(
        3,
        ALICE,
        "failure",
        [{"kind": "password", "result": "wrong_password", "attempt": 0}],
        "192.0.2.3",
    )
    record(4, ALICE, "blocked", [], "198.51.100.4")
    record(5, "mallory@example.com", "failure", [], "203.0.113.5")
    response = client.get(url("login", login.pk))
    sign_ins = response.context["sign_ins"]
    assert [(s.address, s.outcome) for s in sign_ins] == [
        ("192.0.2.1", "success"),
        ("192.0.2.2", "failure"),
        ("192.0.2.3", "failure"),
        ("198.51.100.4", "blocked"),
    ]
    assert [(s.credential, s.detail) for s in sign_ins] == [
        ("app password “Phone”", ""),
        ("app password “Phone”", "revoked"),
        ("password", "wrong password"),
        ("", ""),
    ]
    assert b"203.0.113.5" not in response.content


# -- creating an app password ------------------------------------------------------------


def test_creating_an_app_password_shows_it_once(alice, secret_watch):
    _, client, login = alice
    form = client.get(url("create", login.pk))
    assert form.status_code == 200
    response = client.post(url("create", login.pk), {"label": "Phone", "expires": "30"})
    assert response.status_code == 200
    password = created_password(response)
    secret_watch.add(password)
    match = APP_PASSWORD.fullmatch(password)
    assert match, password
    # Not kept anywhere a browser or proxy could show it again.
    assert "no-store" in response["Cache-Control"]
    assert response.wsgi_request.sensitive_post_parameters == "__ALL__"
    row = AppPassword.objects.get()
    assert (row.login, row.label, row.public_id) == (login, "Phone", match.group(1))
    assert app_password_id(password) == row.public_id
    assert row.password_hash.startswith("$argon2id$")
    assert hashing.verify(row.password_hash, password) == (True, False)
    assert timedelta(days=29, hours=23) < row.expires_at - timezone.now() <= timedelta(days=30)
    for page in (url("index"), url("login", login.pk)):
        assert password.encode() not in client.get(page).content


def test_generated_passwords_are_random_and_long(alice, secret_watch):
    """130 bits: 26 characters from 32, each drawn by the OS's CSPRNG."""
    _, _, login = alice
    seen = set()
    for n in range(20):
        _, password = create_app_password(login, f"device {n}")
        secret_watch.add(password)
        secret = APP_PASSWORD.fullmatch(password).group(2)
        assert len(secret) * 5 >= 128
        assert set(secret) <= set(APP_PASSWORD_ALPHABET)
        seen.add(secret)
    assert len(seen) == 20
    assert len(set(AppPassword.objects.values_list("public_id", flat=True))) == 20


@pytest.mark.parametrize(
    ("data", "field"),
    [({"label": "", "expires": ""}, "label"), ({"label": "x", "expires": "12"}, "expires")],
)
def test_the_create_form_checks_its_fields(alice, data, field):
    _, client, login = alice
    response = client.post(url("create", login.pk), data)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not AppPassword.objects.exists()


def test_a_login_has_at_most_max_app_passwords(alice, settings, secret_watch):
    _, client, login = alice
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "MAX_APP_PASSWORDS": 2}
    for n in range(2):
        secret_watch.add(created_password(client.post(url("create", login.pk), {"label": f"d{n}"})))
    page = client.get(url("login", login.pk))
    assert not page.context["can_create"]
    assert b"the most it may have" in page.content
    refused = client.post(url("create", login.pk), {"label": "one too many"})
    assert b"new-app-password" not in refused.content
    assert b"revoke one you no longer use first" in refused.content
    AppPassword.objects.first().revoke()  # a revoked one no longer counts
    secret_watch.add(created_password(client.post(url("create", login.pk), {"label": "again"})))
    assert AppPassword.objects.live().count() == 2


# -- revoking --------------------------------------------------------------------------------


def test_revoking_asks_first_then_revokes(alice):
    _, client, login = alice
    row, _ = create_app_password(login, "Phone")
    confirm = client.get(url("revoke", login.pk, row.pk))
    assert confirm.status_code == 200
    assert b"Revoke app password" in confirm.content
    row.refresh_from_db()
    assert row.revoked_at is None  # a GET changes nothing
    response = client.post(url("revoke", login.pk, row.pk), follow=True)
    assert response.redirect_chain == [(url("login", login.pk), 302)]
    assert "was revoked" in str(next(iter(response.context["messages"])))
    row.refresh_from_db()
    first = row.revoked_at
    assert first is not None
    client.post(url("revoke", login.pk, row.pk))
    row.refresh_from_db()
    assert row.revoked_at == first
    assert b"revoked already" in client.get(url("revoke", login.pk, row.pk)).content


# -- the login's own password ---------------------------------------------------------------


def test_setting_the_logins_own_password(alice, secret_watch):
    _, client, login = alice
    SmtpLogin.objects.filter(pk=login.pk).update(must_change_password=True)
    assert (
        b"An operator asks you to choose a new password"
        in client.get(url("login", login.pk)).content
    )
    weak = client.post(url("set_password", login.pk), {"password1": "abc12", "password2": "abc12"})
    assert weak.status_code == 200
    assert "password2" in weak.context["form"].errors
    new = "a " + secrets.token_hex(8)
    secret_watch.add(new)
    response = client.post(url("set_password", login.pk), {"password1": new, "password2": new})
    assert response["Location"] == url("login", login.pk)
    assert response.wsgi_request.sensitive_post_parameters == ("password1", "password2")
    login.refresh_from_db()
    assert hashing.verify(login.password_hash, new)[0]
    assert not login.must_change_password
    assert new.encode() not in weak.content


# -- other people's things -----------------------------------------------------------------


def test_nothing_of_another_user_is_reachable(alice, signed_in, owned_login, secret_watch):
    _, client, _ = alice
    bob, _ = signed_in("bob")
    bobs = owned_login(bob, "bob@example.com")
    row, password = create_app_password(bobs, "Bob's phone")
    secret_watch.add(password)
    orphan = owned_login(bob, "nobody@example.com")
    SmtpLogin.objects.filter(pk=orphan.pk).update(owner=None)
    for login in (bobs, orphan):
        for path in (
            url("login", login.pk),
            url("set_password", login.pk),
            url("create", login.pk),
        ):
            assert client.get(path).status_code == 404
            assert (
                client.post(
                    path, {"label": "x", "password1": "q" * 12, "password2": "q" * 12}
                ).status_code
                == 404
            )
    for path in (url("revoke", bobs.pk, row.pk), url("revoke", alice[2].pk, row.pk)):
        assert client.get(path).status_code == 404
        assert client.post(path).status_code == 404
    row.refresh_from_db()
    assert row.revoked_at is None
    assert AppPassword.objects.count() == 1
    assert hashing.verify(
        SmtpLogin.objects.get(pk=bobs.pk).password_hash, "own password of bob@example.com"
    )[0]


def test_writes_need_the_csrf_token(alice):
    user, _, login = alice
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    row, _ = create_app_password(login, "Phone")
    assert client.post(url("create", login.pk), {"label": "x"}).status_code == 403
    assert client.post(url("revoke", login.pk, row.pk)).status_code == 403
    assert client.post(url("set_password", login.pk), {}).status_code == 403
    row.refresh_from_db()
    assert row.revoked_at is None and AppPassword.objects.count() == 1


def test_inactive_logins_are_shown_as_such(alice):
    _, client, login = alice
    SmtpLogin.objects.filter(pk=login.pk).update(is_active=False)
    assert b"inactive" in client.get(url("index")).content
    assert b"This login is inactive" in client.get(url("login", login.pk)).content


# -- a project with kumosubmit's URLs and nothing else ---------------------------------


@pytest.fixture
def app_only(settings):
    """A host project that includes only kumosubmit's URLs, on Django's default settings."""
    settings.ROOT_URLCONF = "tests.urls_app_only"
    settings.LOGIN_URL = "/accounts/login/"
    settings.LOGIN_REDIRECT_URL = "/accounts/profile/"
    settings.LOGOUT_REDIRECT_URL = None
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": []}]  # the app's templates only


def test_a_project_without_sign_in_pages_gets_the_apps(app_only, client, make_user):
    make_user("alice")
    response = client.get("/credentials/")
    assert response["Location"] == "/credentials/sign-in/?next=/credentials/"
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert b'<label for="id_username">' in page.content
    assert b'<form method="post" class="stacked">' in page.content  # back to itself
    # Without "next", the app's sign-in page leads to the logins, not /accounts/profile/.
    signed_in = client.post(
        "/credentials/sign-in/", {"username": "alice", "password": SITE_PASSWORD}
    )
    assert signed_in["Location"] == "/credentials/"
    index = client.get("/credentials/")
    assert index.status_code == 200
    assert b'action="/credentials/sign-out/"' in index.content
    assert b'href="/credentials/site-password/"' in index.content
    assert b'href="/admin/"' not in index.content  # not staff
    changed = client.post(
        "/credentials/site-password/",
        {
            "old_password": SITE_PASSWORD,
            "new_password1": "another site password 42",
            "new_password2": "another site password 42",
        },
    )
    assert changed["Location"] == "/credentials/site-password/done/"
    assert client.get(changed["Location"]).status_code == 200
    signed_out = client.post("/credentials/sign-out/")
    assert signed_out["Location"] == "/credentials/sign-in/"
    assert client.get("/credentials/").status_code == 302


def test_the_projects_sign_in_page_and_redirect_are_used_when_it_has_them(client, make_user):
    """The example project: Django's account pages at accounts/, LOGIN_URL = "login"."""
    make_user("alice")
    assert client.get("/credentials/")["Location"] == "/accounts/login/?next=/credentials/"
    signed_in = client.post(
        "/credentials/sign-in/", {"username": "alice", "password": SITE_PASSWORD}
    )
    assert signed_in["Location"] == "/credentials/"  # LOGIN_REDIRECT_URL
    index = client.get("/credentials/")
    assert b'action="/accounts/logout/"' in index.content
    assert b'href="/accounts/password_change/"' in index.content
