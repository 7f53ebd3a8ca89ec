"""AUTH OAUTHBEARER (RFC 7628) and XOAUTH2 with django-oauth-toolkit tokens, in process."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone
from oauth2_provider.models import AccessToken

from kumosubmit import hooks
from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.models import SmtpLogin
from kumosubmit.oauth.models import SmtpToken
from kumosubmit.oauth.tokens import create_smtp_token, revoke_smtp_token
from kumosubmit.protocol.sasl import SaslError, parse_oauthbearer, parse_xoauth2
from tests.live import LiveSMTPServer, quitting

ALICE = "alice@example.com"
SALES = "sales@example.com"


def oauthbearer(authz: str, token: str) -> str:
    gs2 = f"n,a={authz}," if authz else "n,,"
    raw = f"{gs2}\x01host=mx.test.invalid\x01port=587\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(raw.encode()).decode()


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def error_status(text: bytes) -> dict[str, str]:
    return json.loads(base64.b64decode(text))


@pytest.fixture
def owner(transactional_db: None) -> User:
    return User.objects.create_user("alice", "alice@example.org", "site password of alice")


@pytest.fixture
def alice(make_login: Callable[..., SmtpLogin], owner: User) -> SmtpLogin:
    login = make_login(ALICE, "own password of alice", may_act_as=(SALES,))
    login.owner = owner
    login.save(update_fields=["owner"])
    return login


@pytest.fixture
def token(alice: SmtpLogin, secret_watch) -> Callable[..., str]:
    """A new token for alice (watched for leaks)."""

    def make(expires_in: timedelta | None = timedelta(days=1)) -> str:
        _row, text = create_smtp_token(
            alice, "test", timezone.now() + expires_in if expires_in else None
        )
        secret_watch.add(text)
        secret_watch.add(oauthbearer(ALICE, text), oauthbearer("", text), xoauth2(ALICE, text))
        return text

    return make


# -- parsing (RFC 7628 section 3.1, Google's XOAUTH2) ------------------------------------


def test_parse_oauthbearer():
    # RFC 7628 section 4.1's example.
    raw = (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    creds = parse_oauthbearer(raw)
    assert creds.authz == "user@example.com"
    assert creds.token == "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
    assert "vF9d" not in repr(creds)
    assert parse_oauthbearer(b"n,,\x01auth=bearer abc\x01\x01").authz == ""
    assert parse_oauthbearer(b"n,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01").authz == "a,b=c"


@pytest.mark.parametrize(
    "raw",
    [
        b"\x01",  # the dummy response is no AUTH
        b"n,,\x01auth=Bearer t\x01",  # one kvsep short
        b"p=tls-unique,,\x01auth=Bearer t\x01\x01",  # channel binding
        b"n,,\x01auth=Basic dXNlcjpwdw==\x01\x01",
        b"n,,\x01host=x\x01\x01",  # no auth
        b"n,a=bad=2,\x01auth=Bearer t\x01\x01",
        b"n,,\x01auth=Bearer a b\x01\x01",
    ],
)
def test_parse_oauthbearer_refuses(raw):
    with pytest.raises(SaslError):
        parse_oauthbearer(raw)


def test_parse_xoauth2():
    creds = parse_xoauth2(b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2\x01\x01")
    assert creds == ("someuser@example.com", "ya29.vF9dft4qmTc2")
    with pytest.raises(SaslError):
        parse_xoauth2(b"user=x\x01\x01")


# -- over SMTP --------------------------------------------------------------------------


def test_mechanisms_are_offered_only_after_tls(smtp_server: LiveSMTPServer):
    with quitting(smtp_server.plain()) as client:
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "OAUTHBEARER " + oauthbearer("", "x"))[0] == 538
    with quitting(smtp_server.starttls()) as client:
        assert {"OAUTHBEARER", "XOAUTH2"} <= set(client.esmtp_features["auth"].split())


def test_not_offered_without_a_validator(smtp_server: LiveSMTPServer, settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "OAUTH": {"VALIDATOR": None}}
    with quitting(smtp_server.starttls()) as client:
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        assert client.docmd("AUTH", "XOAUTH2 " + xoauth2("a", "b"))[0] == 504


@pytest.mark.parametrize("authz", [ALICE, ""])
def test_oauthbearer_good_token(smtp_server: LiveSMTPServer, alice, token, authz):
    text = token()
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "OAUTHBEARER " + oauthbearer(authz, text)) == (
            235,
            b"2.7.0 Authentication successful",
        )
        assert client.docmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    smtp_server.settle()
    record = ConnectionRecord.objects.get()
    assert record.authc == ALICE
    attempt = record.meta["auth_attempts"][-1]
    assert attempt["mechanism"] == "OAUTHBEARER" and attempt["outcome"] == "success"
    note = record.meta["auth_credentials"][-1]
    assert note["kind"] == "oauth_token" and note["result"] == "accepted"
    assert note["label"] == "test"
    row = SmtpToken.objects.get()
    assert row.last_used_at is not None and row.last_used_from == "127.0.0.1"


def test_xoauth2_good_token_with_challenge(smtp_server: LiveSMTPServer, alice, token):
    text = token()
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "XOAUTH2")[0] == 334
        assert client.docmd(xoauth2(ALICE, text))[0] == 235


def test_acting_as_an_identity_the_login_may_act_as(smtp_server, alice, token, make_login):
    text = token()
    make_login("bob@example.com", "own password of bob")
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "OAUTHBEARER " + oauthbearer(SALES, text))[0] == 235
    with quitting(smtp_server.starttls()) as client:
        code, _status = client.docmd("AUTH", "OAUTHBEARER " + oauthbearer("bob@example.com", text))
        assert code == 334
        assert client.docmd("AQ==")[0] == 535


def bad_attempt(client, mechanism: str, blob: str) -> tuple[dict[str, str], tuple[int, bytes]]:
    code, text = client.docmd("AUTH", f"{mechanism} {blob}")
    assert code == 334, (code, text)
    status = error_status(text)
    dummy = "AQ==" if mechanism == "OAUTHBEARER" else ""
    return status, client.docmd(dummy)


@pytest.mark.parametrize("case", ["revoked", "expired", "wrong_scope", "unknown"])
def test_bad_tokens_get_the_error_challenge_then_535(
    smtp_server: LiveSMTPServer, alice, token, secret_watch, case
):
    text = token()
    if case == "revoked":
        revoke_smtp_token(SmtpToken.objects.get())
    elif case == "expired":
        AccessToken.objects.update(expires=timezone.now() - timedelta(seconds=1))
    elif case == "wrong_scope":
        AccessToken.objects.update(scope="read write")
    else:
        text = "unknown-" + text[8:]
        secret_watch.add(text, oauthbearer(ALICE, text), xoauth2(ALICE, text))
    for mechanism, blob in (
        ("OAUTHBEARER", oauthbearer(ALICE, text)),
        ("XOAUTH2", xoauth2(ALICE, text)),
    ):
        with quitting(smtp_server.starttls()) as client:
            status, final = bad_attempt(client, mechanism, blob)
            assert status == {"status": "invalid_token", "scope": "smtp"}
            assert final == (535, b"5.7.8 Authentication credentials invalid")
    smtp_server.settle()
    notes = [r.meta["auth_credentials"][-1] for r in ConnectionRecord.objects.all()]
    expected = {"revoked": "revoked", "expired": "expired", "wrong_scope": "wrong_scope"}
    assert {n["result"] for n in notes} == {expected.get(case, "unknown_token")}


def test_error_challenge_names_the_openid_configuration(smtp_server, alice, settings):
    url = "https://id.example.com/.well-known/openid-configuration"
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "OAUTH": {"VALIDATOR": "kumosubmit.oauth.toolkit.validate", "OPENID_CONFIGURATION": url},
    }
    with quitting(smtp_server.starttls()) as client:
        status, final = bad_attempt(client, "OAUTHBEARER", oauthbearer(ALICE, "nope-nope"))
    assert status == {"status": "invalid_token", "scope": "smtp", "openid-configuration": url}
    assert final[0] == 535


def test_cancelled_error_challenge(smtp_server, alice):
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "OAUTHBEARER " + oauthbearer(ALICE, "nope-nope"))[0] == 334
        assert client.docmd("*")[0] == 501


def test_a_token_for_a_user_with_two_logins_needs_the_authzid(
    smtp_server, alice, token, make_login, owner
):
    text = token()
    other = make_login("alice2@example.com", "own password of alice2")
    other.owner = owner
    other.save(update_fields=["owner"])
    with quitting(smtp_server.starttls()) as client:
        _status, final = bad_attempt(client, "OAUTHBEARER", oauthbearer("", text))
        assert final[0] == 535
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "XOAUTH2 " + xoauth2("alice2@example.com", text))[0] == 235


def test_inactive_login_is_refused(smtp_server, alice, token):
    text = token()
    SmtpLogin.objects.filter(pk=alice.pk).update(is_active=False)
    with quitting(smtp_server.starttls()) as client:
        assert bad_attempt(client, "XOAUTH2", xoauth2(ALICE, text))[1][0] == 535


def test_failures_count_as_penalties(smtp_server, alice, settings):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "BRUTE_FORCE": {"DELAY": 0, "IP_BLOCK_AFTER": 2},
    }
    for _ in range(2):
        with quitting(smtp_server.starttls()) as client:
            assert bad_attempt(client, "XOAUTH2", xoauth2(ALICE, "guess-guess"))[1][0] == 535
    with quitting(smtp_server.starttls()) as client:
        code, _text = client.docmd("AUTH", "XOAUTH2 " + xoauth2(ALICE, "guess-guess"))
    assert code == 421


def test_tokens_take_the_auth_lanes(smtp_server, alice, token, settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "BRUTE_FORCE": {"DELAY": 0}}
    with quitting(smtp_server.starttls()) as client:
        assert bad_attempt(client, "XOAUTH2", xoauth2(ALICE, "guess-guess"))[1][0] == 535
    good = token()
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "XOAUTH2 " + xoauth2(ALICE, good))[0] == 235
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "XOAUTH2 " + xoauth2(ALICE, good))[0] == 235
    smtp_server.settle()
    lanes = [r.auth_lane for r in ConnectionRecord.objects.order_by("started_at")]
    # Unknown pair (the failure, the first success) in the bounded lane; then known.
    assert lanes == ["bounded", "bounded", "priority"]


def test_a_hook_of_ones_own(smtp_server, make_login, secret_watch):
    make_login(ALICE, "own password of alice")
    secret_watch.add("project-token-1234")
    seen = []

    def by_dict(authz, token, conn_meta):
        seen.append(authz)
        return {"project-token-1234": ALICE}.get(token, False)

    with hooks.override("smtp_server_auth_oauthbearer", by_dict):
        with quitting(smtp_server.starttls()) as client:
            assert client.docmd("AUTH", "XOAUTH2 " + xoauth2("", "project-token-1234"))[0] == 235
        with quitting(smtp_server.starttls()) as client:
            assert bad_attempt(client, "XOAUTH2", xoauth2("x", "project-token-9999"))[1][0] == 535
    assert seen == ["", "x"]


def test_a_failing_hook_is_454_and_hides_the_token(smtp_server, secret_watch):
    secret_watch.add("project-token-5678")

    def broken(authz, token, conn_meta):
        raise RuntimeError(f"cannot check {token}")

    with hooks.override("smtp_server_auth_oauthbearer", broken):
        with quitting(smtp_server.starttls()) as client:
            code, _ = client.docmd("AUTH", "XOAUTH2 " + xoauth2("a", "project-token-5678"))
    assert code == 454


# -- createsmtptoken ----------------------------------------------------------------------


def test_createsmtptoken_prints_the_token_once(alice, secret_watch):
    out, err = StringIO(), StringIO()
    call_command("createsmtptoken", ALICE, "--expires", "7", stdout=out, stderr=err)
    text = out.getvalue().strip()
    secret_watch.add(text)
    assert len(text) >= 30 and text not in err.getvalue()
    row = SmtpToken.objects.get()
    assert row.login == alice and row.label == "createsmtptoken"
    assert timedelta(days=6.9) < row.expires_at - timezone.now() < timedelta(days=7.1)
    access_token = AccessToken.objects.get()
    assert access_token.user == alice.owner and access_token.scope == "smtp"
    assert access_token.token == ""  # only its checksum is kept


def test_createsmtptoken_refusals(make_login, transactional_db):
    with pytest.raises(CommandError, match="No SMTP login"):
        call_command("createsmtptoken", "nobody@example.com")
    make_login("lonely@example.com", "own password of lonely")
    with pytest.raises(CommandError, match="no owner"):
        call_command("createsmtptoken", "lonely@example.com")


def test_a_token_as_long_as_rfc_4954_allows(smtp_server, make_login, secret_watch):
    """RFC 4954 section 4: AUTH lines up to 12288 octets (a signed JWT is often 1-3 KB)."""
    make_login(ALICE, "own password of alice")
    long_token = "t" * 9000
    secret_watch.add(long_token)
    with hooks.override("smtp_server_auth_oauthbearer", lambda authz, token, meta: ALICE):
        with quitting(smtp_server.starttls()) as client:
            blob = xoauth2(ALICE, long_token)
            assert len(f"AUTH XOAUTH2 {blob}") > 12000
            assert client.docmd("AUTH", f"XOAUTH2 {blob}")[0] == 235
        with quitting(smtp_server.starttls()) as client:
            assert client.docmd("AUTH", "OAUTHBEARER")[0] == 334
            assert client.docmd(oauthbearer(ALICE, long_token))[0] == 235
