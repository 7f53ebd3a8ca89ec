"""A person with a real browser: sign in, make an app password, send with it, revoke it.

Headless Chromium from the operating system (Playwright drives it) against the
pages on a real HTTP server (pytest-django's live_server), and a real
``runsmtpd`` process on the same database for the AUTH. The screenshots it
takes are the ones docs/web.md shows.
"""

from __future__ import annotations

import re
import smtplib

import pytest
from django.contrib.auth.models import User

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials import hashing
from kumosubmit.credentials.models import AppPassword, SmtpLogin, create_app_password
from tests.live import quitting
from tests.web.conftest import SCREENSHOTS, SITE_PASSWORD, wait_until

ALICE = "alice@example.com"
APP_PASSWORD = re.compile(r"ksub_[a-z2-7]{8}_[a-z2-7]{26}")


def auth_plain(port: int, pki, username: str, password: str) -> int:
    """AUTH PLAIN over STARTTLS against runsmtpd; the reply code."""
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=15)
    with quitting(client):
        client.starttls(context=pki.client_context())
        client.ehlo()
        try:
            code, _ = client.login(username, password)
        except smtplib.SMTPAuthenticationError as error:
            code = error.smtp_code
        return code


def shoot(page, name: str) -> None:
    """Save a screenshot for docs/web.md (the whole page, at 1000 px wide)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes().startswith(b"\x89PNG")


def sign_in(page, base: str, username: str = "alice") -> None:
    page.goto(f"{base}/credentials/")
    assert "/accounts/login/" in page.url
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(SITE_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/credentials/")


@pytest.mark.timeout(120)
def test_create_use_and_revoke_an_app_password(
    live_server, new_browser, runsmtpd, pki, make_user, owned_login, secret_watch
):
    alice = make_user("alice")
    login = owned_login(alice, ALICE)
    context = new_browser(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    base = live_server.url

    # Signing in goes through Django's own page.
    page.goto(f"{base}/credentials/")
    page.wait_for_url(re.compile(r"/accounts/login/\?next=/credentials/$"))
    shoot(page, "sign-in")
    sign_in(page, base)
    shoot(page, "logins")
    page.get_by_role("link", name=ALICE).click()
    page.wait_for_url(f"{base}/credentials/{login.pk}/")

    # Create one, with a label and an expiry.
    page.get_by_label("Label").fill("Phone")
    page.get_by_label("Expires").select_option(label="In 90 days")
    shoot(page, "login")
    page.get_by_role("button", name="Create app password").click()
    password = page.locator("#new-app-password").inner_text()
    secret_watch.add(password)
    assert APP_PASSWORD.fullmatch(password), password
    shoot(page, "app-password-created")
    # The copy button puts exactly that on the clipboard.
    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied to the clipboard.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == password

    app_password = AppPassword.objects.get(login=login)
    assert app_password.label == "Phone"
    assert app_password.expires_at is not None
    assert app_password.password_hash.startswith("$argon2id$")
    assert hashing.verify(app_password.password_hash, password)[0]

    # It is the login's password for AUTH PLAIN over STARTTLS.
    assert auth_plain(runsmtpd, pki, ALICE, password) == 235
    wait_until(
        lambda: ConnectionRecord.objects.filter(authc=ALICE, auth_outcome="success").exists(),
        what="the audit row of the AUTH",
    )

    # The login's page shows the use: time and address, and the sign-in.
    page.get_by_role("link", name="Done").click()
    page.wait_for_url(f"{base}/credentials/{login.pk}/")
    app_passwords = page.get_by_role("table", name="App passwords")
    row = app_passwords.get_by_role("row").filter(has_text="Phone").first
    assert "127.0.0.1" in row.inner_text()
    sign_ins = page.locator("table", has=page.get_by_role("columnheader", name="When"))
    assert "signed in" in sign_ins.inner_text()
    assert "app password “Phone”" in sign_ins.inner_text()
    shoot(page, "login-in-use")

    # Revoke it: a confirmation page, then a POST.
    page.get_by_role("link", name="Revoke Phone").click()
    shoot(page, "revoke")
    page.get_by_role("button", name="Revoke app password").click()
    page.wait_for_url(f"{base}/credentials/{login.pk}/")
    assert "was revoked" in page.get_by_role("status").first.inner_text()
    revoked = page.locator("table", has=page.get_by_role("columnheader", name="Since"))
    assert "revoked" in revoked.inner_text()
    assert AppPassword.objects.get().revoked_at is not None

    # And AUTH refuses it now.
    assert auth_plain(runsmtpd, pki, ALICE, password) == 535
    wait_until(
        lambda: ConnectionRecord.objects.filter(authc=ALICE, auth_outcome="failure").exists(),
        what="the audit row of the refused AUTH",
    )
    page.reload()
    assert "app password “Phone” (revoked)" in sign_ins.inner_text()
    shoot(page, "login-revoked")
    # The password was shown once: no page has it now.
    assert password not in page.content()


def test_another_users_credentials_are_not_reachable_by_url(
    live_server, new_browser, make_user, owned_login, secret_watch
):
    alice, bob = make_user("alice"), make_user("bob")
    owned_login(alice, ALICE)
    bobs = owned_login(bob, "bob@example.com")
    bobs_app_password, bobs_password = create_app_password(bobs, "Bob's phone")
    secret_watch.add(bobs_password)
    page = new_browser().new_page()
    base = live_server.url
    sign_in(page, base)
    assert "bob@example.com" not in page.content()

    for path in (
        f"/credentials/{bobs.pk}/",
        f"/credentials/{bobs.pk}/password/",
        f"/credentials/{bobs.pk}/app-passwords/new/",
        f"/credentials/{bobs.pk}/app-passwords/{bobs_app_password.pk}/revoke/",
    ):
        response = page.goto(base + path)
        assert response.status == 404, path
        assert "bob" not in page.content().lower(), path
    # Bob's app password under Alice's login is no way in either.
    alices = SmtpLogin.objects.get(username=ALICE)
    response = page.goto(
        f"{base}/credentials/{alices.pk}/app-passwords/{bobs_app_password.pk}/revoke/"
    )
    assert response.status == 404
    # A forged POST from Alice's session, with her CSRF token, changes nothing of Bob's.
    page.goto(f"{base}/credentials/{alices.pk}/")
    token = page.locator("input[name=csrfmiddlewaretoken]").first.input_value()
    for path, data in (
        (f"/credentials/{bobs.pk}/app-passwords/{bobs_app_password.pk}/revoke/", {}),
        (f"/credentials/{bobs.pk}/app-passwords/new/", {"label": "mine now", "expires": ""}),
        (
            f"/credentials/{bobs.pk}/password/",
            {"password1": "taken over at last 9", "password2": "taken over at last 9"},
        ),
    ):
        response = page.request.post(
            base + path, form={"csrfmiddlewaretoken": token, **data}, headers={"Referer": base}
        )
        assert response.status == 404, path
    bobs_app_password.refresh_from_db()
    assert bobs_app_password.revoked_at is None
    assert bobs.app_passwords.count() == 1
    assert hashing.verify(
        SmtpLogin.objects.get(pk=bobs.pk).password_hash, "own password of bob@example.com"
    )[0]
    assert User.objects.count() == 2


def test_the_pages_work_without_javascript(
    live_server, new_browser, make_user, owned_login, secret_watch
):
    login = owned_login(make_user("alice"), ALICE)
    page = new_browser(java_script_enabled=False).new_page()
    base = live_server.url
    sign_in(page, base)
    page.goto(f"{base}/credentials/{login.pk}/")
    page.get_by_label("Label").fill("Old laptop")
    page.get_by_role("button", name="Create app password").click()
    password = page.locator("#new-app-password").inner_text()
    secret_watch.add(password)
    assert APP_PASSWORD.fullmatch(password)
    # Without JavaScript the copy button stays hidden; the text can be selected and copied.
    assert not page.get_by_role("button", name="Copy").is_visible()
    page.get_by_role("link", name="Done").click()
    page.get_by_role("link", name="Revoke Old laptop").click()
    page.get_by_role("button", name="Revoke app password").click()
    page.wait_for_url(f"{base}/credentials/{login.pk}/")
    assert AppPassword.objects.get().revoked_at is not None
    # Signing out is a POST form too.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/accounts/login/$"))
