"""The second factor in a real browser: TOTP with codes from pyotp, a passkey from
Chromium's virtual authenticator (the DevTools protocol's WebAuthn domain), and the
step-up check before an app password is made.

Headless Chromium from the operating system against pytest-django's live_server,
which runs in this process: the ``settings`` fixture changes what it serves.
"""

from __future__ import annotations

import re
import time

import pyotp
import pytest
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from kumosubmit.credentials.models import AppPassword
from kumosubmit.spool.models import Message
from kumosubmit.web.models import Passkey
from tests.web.conftest import SITE_PASSWORD
from tests.web.test_browser import APP_PASSWORD, shoot

ALICE = "alice@example.com"


def second_factor_settings(settings, **values) -> None:
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "SECOND_FACTOR": "staff", **values}


def fresh_code(secret: str, device: TOTPDevice) -> str:
    """A code the device has not seen, within its window (waiting for one if need be).

    django-otp accepts the steps around now (plus the drift it learnt), each once.
    """
    while True:
        device.refresh_from_db()
        now = int(time.time() // device.step) + device.drift
        step = max(device.last_t + 1, now - device.tolerance)
        if step <= now + device.tolerance:
            return pyotp.TOTP(secret).at(step * device.step)
        time.sleep(0.5)


def password_sign_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(SITE_PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def sign_out(page) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/accounts/login/$"))


@pytest.mark.timeout(180)
def test_totp_enrolment_sign_in_and_step_up(
    live_server, new_browser, settings, make_user, owned_login, secret_watch
):
    second_factor_settings(settings)
    alice = make_user("alice")
    alice.is_staff = True  # the default policy requires a second factor of staff
    alice.save()
    login = owned_login(alice, ALICE)
    page = new_browser().new_page()
    base = live_server.url

    # Signed in with the password alone, staff are led to enrol before anything else.
    password_sign_in(page, base, "alice")
    page.wait_for_url(re.compile(r"/credentials/security/\?next=%2Fcredentials%2F$"))
    assert "must have a second factor" in page.content()
    response = page.goto(f"{base}/admin/")
    assert "/credentials/security/" in page.url, response
    page.get_by_role("link", name="Set up an authenticator app").click()
    page.wait_for_url(re.compile(r"/credentials/security/totp/"))
    assert page.locator("figure.qr svg path").count() == 1  # the QR code, drawn as SVG
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    shoot(page, "totp-enrol")
    device = TOTPDevice.objects.get(user=alice)
    page.get_by_label("Code").fill(fresh_code(secret, device))
    page.get_by_role("button", name="Turn on").click()
    codes = page.locator("#recovery-codes code").all_inner_texts()
    assert len(codes) == 10
    for code in codes:
        secret_watch.add(code)  # kept only as keyed hashes
    # Then on to the page first asked for.
    page.get_by_role("link", name="Done").click()
    page.wait_for_url(f"{base}/admin/")
    page.goto(f"{base}/credentials/")
    sign_out(page)

    # Sign in again: the password, then a code.
    password_sign_in(page, base, "alice")
    page.wait_for_url(re.compile(r"/credentials/verify/\?next="))
    page.get_by_label("Code").fill("000000" if fresh_code(secret, device) != "000000" else "111111")
    page.get_by_role("button", name="Verify").click()
    assert "That code is not right" in page.content()
    time.sleep(1.1)  # django-otp makes the next try wait 1 s after a wrong code, 2 s after two...
    page.get_by_label("Code").fill(fresh_code(secret, device))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url(f"{base}/credentials/")
    page.goto(f"{base}/admin/")
    assert page.url == f"{base}/admin/"

    # The check is stale now: a new app password asks for it again first.
    second_factor_settings(settings, SECOND_FACTOR_MAX_AGE=0.5)
    time.sleep(0.6)
    page.goto(f"{base}/credentials/{login.pk}/")
    page.get_by_label("Label").fill("Phone")
    page.get_by_role("button", name="Create app password").click()
    page.wait_for_url(re.compile(r"/credentials/verify/\?next=.*again=1"))
    assert "Confirm it is you" in page.content()
    assert not AppPassword.objects.exists()
    shoot(page, "step-up")
    page.get_by_label("Code").fill(fresh_code(secret, device))
    second_factor_settings(settings)  # fresh for the default 10 minutes from here
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url(f"{base}/credentials/{login.pk}/app-passwords/new/")
    page.get_by_label("Label").fill("Phone")
    page.get_by_role("button", name="Create app password").click()
    password = page.locator("#new-app-password").inner_text()
    secret_watch.add(password)
    assert APP_PASSWORD.fullmatch(password)
    # Its owner is told, through the queue.
    notice = Message.objects.get(meta__notice="APP_PASSWORD_CREATED")
    assert notice.rcpt_tos == ["alice@example.org"]
    assert f"{base}/credentials/{login.pk}/".encode() in bytes(notice.content)

    # A recovery code stands in once.
    sign_out(page)
    password_sign_in(page, base, "alice")
    page.get_by_label("Code").fill(codes[0])
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url(f"{base}/credentials/")
    assert StaticToken.objects.filter(device__user=alice).count() == 9


@pytest.mark.timeout(180)
def test_passkey_enrolment_and_sign_in_with_a_virtual_authenticator(
    live_server, new_browser, settings, make_user, secret_watch
):
    second_factor_settings(settings)
    bob = make_user("bob")
    context = new_browser()
    page = context.new_page()
    base = live_server.url
    assert base.startswith("http://localhost:")  # a secure context; an IP is no RP id
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )["authenticatorId"]

    # Bob is not staff: nothing forces him, he adds a passkey himself.
    password_sign_in(page, base, "bob")
    page.wait_for_url(f"{base}/credentials/")
    page.get_by_role("link", name="Second factor").click()
    page.get_by_label("Passkey name").fill("Laptop")
    page.get_by_role("button", name="Add a passkey").click()
    page.wait_for_url(f"{base}/credentials/")
    key = Passkey.objects.get(user=bob)
    assert key.name == "Laptop" and key.confirmed
    stored = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert len(stored) == 1
    page.get_by_role("link", name="Second factor").click()
    shoot(page, "second-factor")
    sign_out(page)

    # The password alone no longer lets him in; the passkey does.
    password_sign_in(page, base, "bob")
    page.wait_for_url(re.compile(r"/credentials/verify/\?next="))
    assert page.goto(f"{base}/credentials/").url.startswith(f"{base}/credentials/verify/")
    page.get_by_role("button", name="Use a passkey").click()
    page.wait_for_url(f"{base}/credentials/")
    key.refresh_from_db()
    assert key.last_used_at is not None

    # Removing it tells him so (his only factor: he is back to the password alone).
    page.get_by_role("link", name="Second factor").click()
    page.get_by_role("button", name="Remove Laptop").click()
    assert "was removed" in page.get_by_role("status").first.inner_text()
    assert not Passkey.objects.exists()
    assert Message.objects.filter(meta__notice="SECOND_FACTOR_REMOVED").count() == 1
