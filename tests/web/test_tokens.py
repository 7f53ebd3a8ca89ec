"""Tokens on the self-service pages: made and shown once, listed, revoked; used over SMTP."""

from __future__ import annotations

import base64
import re

import pytest
from django.test import Client
from django.urls import reverse
from oauth2_provider.models import AccessToken

from kumosubmit.oauth.models import SmtpToken
from tests.live import quitting

ALICE = "alice@example.com"


def url(name: str, *args: object) -> str:
    return reverse(f"credentials:{name}", args=args)


def created_token(response) -> str:
    match = re.search(rb'<code id="new-token"[^>]*>([^<]*)</code>', response.content)
    assert match, response.content
    return match.group(1).decode()


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def auth(server, token: str) -> int:
    with quitting(server.starttls()) as client:
        code, _ = client.docmd("AUTH", "XOAUTH2 " + xoauth2(ALICE, token))
        return client.docmd("")[0] if code == 334 else code


@pytest.fixture
def alice(signed_in, owned_login):
    user, client = signed_in("alice")
    return owned_login(user, ALICE), client


def test_create_use_list_and_revoke_a_token(smtp_server, alice, secret_watch):
    login, client = alice
    page = client.get(url("login", login.pk))
    assert b"Create token" in page.content
    response = client.post(
        url("create_token", login.pk), {"label": "backup script", "expires": "30"}
    )
    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    token = created_token(response)
    secret_watch.add_bearer(ALICE, token)
    row = SmtpToken.objects.get()
    assert (row.login, row.label) == (login, "backup script")
    assert AccessToken.objects.get().scope == "smtp"

    assert auth(smtp_server, token) == 235
    page = client.get(url("login", login.pk)).content.decode()
    assert "backup script" in page and token not in page
    assert "127.0.0.1" in page  # last used from
    smtp_server.settle()
    assert "token “backup script”" in client.get(url("login", login.pk)).content.decode()

    confirm = client.get(url("revoke_token", login.pk, row.pk))
    assert b"Revoke the token" in confirm.content
    done = client.post(url("revoke_token", login.pk, row.pk), follow=True)
    assert "was revoked" in done.content.decode()
    assert not AccessToken.objects.exists()
    assert auth(smtp_server, token) == 535
    smtp_server.settle()
    page = client.get(url("login", login.pk)).content.decode()
    assert "Revoked and expired tokens" in page
    assert "(revoked)" in page  # the refused sign-in


def test_someone_elses_login_and_token_are_404(alice, signed_in, owned_login, secret_watch):
    login, client = alice
    bob_user, bob = signed_in("bob")
    response = bob.post(url("create_token", login.pk), {"label": "x", "expires": "7"})
    assert response.status_code == 404
    client.post(url("create_token", login.pk), {"label": "mine", "expires": "7"})
    row = SmtpToken.objects.get()
    assert bob.post(url("revoke_token", login.pk, row.pk)).status_code == 404
    bobs_login = owned_login(bob_user, "bob@example.com")
    assert bob.post(url("revoke_token", bobs_login.pk, row.pk)).status_code == 404
    assert SmtpToken.objects.get().revoked_at is None


def test_writes_need_csrf(alice):
    login, _client = alice
    client = Client(enforce_csrf_checks=True)
    client.force_login(login.owner)
    response = client.post(url("create_token", login.pk), {"label": "x", "expires": "7"})
    assert response.status_code == 403
    assert not SmtpToken.objects.exists()


def test_no_token_section_without_the_toolkit_validator(alice, settings):
    login, client = alice
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "OAUTH": {"VALIDATOR": None}}
    assert b"Create token" not in client.get(url("login", login.pk)).content
    assert client.get(url("create_token", login.pk)).status_code == 404
