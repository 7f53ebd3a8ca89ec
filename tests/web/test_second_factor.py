"""The second factor through Django's test client: who must have one, the middleware,
step-up, recovery codes, the passkey endpoints' refusals, and the checks.

The browser flows (TOTP codes from pyotp, a passkey from Chromium's virtual
authenticator) are in test_browser_second_factor.py.
"""

from __future__ import annotations

import time
from base64 import b32encode

import pyotp
import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.test import Client
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from kumosubmit.spool.models import Message
from kumosubmit.web import second_factor
from tests.web.conftest import SITE_PASSWORD


@pytest.fixture
def policy(settings):
    def set_policy(value: str = "staff", **more) -> None:
        settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "SECOND_FACTOR": value, **more}

    return set_policy


def signed_in_with_password(username: str) -> Client:
    client = Client()
    response = client.post("/accounts/login/", {"username": username, "password": SITE_PASSWORD})
    assert response.status_code == 302
    return client


def enrol_totp(user: User) -> tuple[TOTPDevice, pyotp.TOTP]:
    device = TOTPDevice.objects.create(user=user, name="app", confirmed=True)
    return device, pyotp.TOTP(b32encode(device.bin_key).decode())


@pytest.mark.parametrize(
    ("value", "staff_led", "user_led"),
    [("staff", True, False), ("all", True, True), ("none", False, False)],
)
def test_the_policy_decides_who_is_led_to_enrol(db, policy, make_user, value, staff_led, user_led):
    policy(value)
    staff = make_user("root")
    staff.is_staff = True
    staff.save()
    make_user("alice")
    for username, led in (("root", staff_led), ("alice", user_led)):
        client = signed_in_with_password(username)
        for path in ("/credentials/", "/admin/"):
            response = client.get(path)
            location = response.get("Location", "")
            assert location.startswith("/credentials/security/?next=") == led, (username, path)
        # Enrolment and signing out stay reachable.
        assert client.get("/credentials/security/").status_code == 200
        assert client.get("/credentials/security/totp/").status_code == 200


def test_who_has_a_second_factor_must_use_it_whatever_the_policy(db, policy, make_user):
    policy("none")
    alice = make_user("alice")
    _device, totp = enrol_totp(alice)
    client = signed_in_with_password("alice")
    for path in (
        "/credentials/",
        "/credentials/security/",
        "/credentials/security/totp/",
        "/admin/",
    ):
        assert client.get(path)["Location"].startswith("/credentials/verify/?next="), path
    # A passkey ceremony cannot be begun to register one either.
    response = client.post("/credentials/security/passkeys/begin/")
    assert response["Location"].startswith("/credentials/verify/")
    response = client.post("/credentials/verify/", {"code": totp.now(), "next": "/credentials/"})
    assert response["Location"] == "/credentials/"
    assert client.get("/credentials/").status_code == 200


def test_a_login_password_asks_for_the_second_factor_again_when_stale(
    db, policy, make_user, owned_login
):
    policy("staff", SECOND_FACTOR_MAX_AGE=600)
    alice = make_user("alice")
    login = owned_login(alice, "alice@example.com")
    _device, totp = enrol_totp(alice)
    client = signed_in_with_password("alice")
    client.post("/credentials/verify/", {"code": totp.now()})
    path = f"/credentials/{login.pk}/password/"
    assert client.get(path).status_code == 200
    session = client.session
    session[second_factor.VERIFIED_AT] = time.time() - 601
    session.save()
    for response in (client.get(path), client.post(path, {})):
        assert response["Location"].startswith("/credentials/verify/?next=")
        assert "again=1" in response["Location"]
    response = client.get(f"/credentials/{login.pk}/app-passwords/new/")
    assert response["Location"].startswith("/credentials/verify/")


def test_recovery_codes_are_kept_hashed_and_work_once(db, policy, make_user):
    policy("none")
    alice = make_user("alice")
    enrol_totp(alice)
    codes = second_factor.new_recovery_codes(alice)
    assert len(codes) == 10 and len(set(codes)) == 10
    stored = set(StaticToken.objects.values_list("token", flat=True))
    assert not stored & {c.replace("-", "") for c in codes} and not stored & set(codes)
    client = signed_in_with_password("alice")
    response = client.post("/credentials/verify/", {"code": codes[3].upper()})
    assert response["Location"] == "/credentials/"
    other = signed_in_with_password("alice")
    time.sleep(1.1)  # django-otp's back-off after the try above is past
    assert other.post("/credentials/verify/", {"code": codes[3]}).status_code == 200  # used up
    assert StaticToken.objects.count() == 9


def test_removing_the_last_factor_drops_the_recovery_codes_and_tells_the_owner(
    db, policy, make_user
):
    policy("none")
    alice = make_user("alice")
    device, totp = enrol_totp(alice)
    second_factor.new_recovery_codes(alice)
    client = signed_in_with_password("alice")
    client.post("/credentials/verify/", {"code": totp.now()})
    response = client.post(f"/credentials/security/totp/{device.pk}/remove/")
    assert response["Location"] == "/credentials/security/"
    assert not TOTPDevice.objects.exists() and not StaticToken.objects.exists()
    notice = Message.objects.get(meta__notice="SECOND_FACTOR_REMOVED")
    assert notice.rcpt_tos == ["alice@example.org"]
    assert b"http://testserver/credentials/security/" in bytes(notice.content)


def test_someone_elses_device_cannot_be_removed(db, policy, make_user):
    policy("none")
    bob_device, _ = enrol_totp(make_user("bob"))
    make_user("alice")
    client = signed_in_with_password("alice")
    assert client.post(f"/credentials/security/totp/{bob_device.pk}/remove/").status_code == 404
    assert TOTPDevice.objects.filter(pk=bob_device.pk).exists()


def test_passkey_finish_without_a_ceremony_or_with_junk_is_refused(db, policy, make_user):
    policy("none")
    make_user("alice")
    client = signed_in_with_password("alice")
    response = client.post(
        "/credentials/security/passkeys/finish/", b"{}", content_type="application/json"
    )
    assert response.status_code == 400 and "start again" in response.json()["error"]
    client.post("/credentials/security/passkeys/begin/")
    response = client.post(
        "/credentials/security/passkeys/finish/",
        {"credential": {"id": "AAAA", "response": {}}},
        content_type="application/json",
    )
    assert response.status_code == 400
    response = client.post("/credentials/security/passkeys/finish/", b"not json", content_type="x")
    assert response.status_code == 400


def test_the_settings_are_checked(settings):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "SECOND_FACTOR": "admins",
        "SECOND_FACTOR_MAX_AGE": 0,
    }
    ids = [m.id for m in run_checks()]
    assert "kumosubmit.E072" in ids and "kumosubmit.E073" in ids
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "SECOND_FACTOR": "all"}
    settings.MIDDLEWARE = [
        m for m in settings.MIDDLEWARE if m != "kumosubmit.web.middleware.SecondFactorMiddleware"
    ]
    assert "kumosubmit.E074" in [m.id for m in run_checks()]
