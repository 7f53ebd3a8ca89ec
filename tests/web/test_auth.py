"""App passwords at AUTH, through real TLS sessions against a live listener.

The built-in handler accepts a login's own password or any live app password
of that login; an expired or revoked one, one of another login, or a wrong
secret behind a real id gets 535. Policies (app passwords only, a forced
password change) refuse the own password. Each attempt costs one argon2
verification, however many app passwords the login has.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials import service
from kumosubmit.credentials.models import AppPassword, SmtpLogin, create_app_password
from kumosubmit.web.forms import LoginPasswordForm
from tests.live import b64, plain_blob, quitting
from tests.security.conftest import lenient_kumosubmit

ALICE = "alice@example.com"
BOB = "bob@example.com"
OWN = "alice's own password 1"


def attempt(server, watch, user: str, password: str, authz: str = "") -> int:
    """One AUTH PLAIN on a fresh STARTTLS connection; the reply code."""
    watch.add_plain(authz, user, password)
    with quitting(server.starttls()) as client:
        return client.docmd("AUTH", "PLAIN " + plain_blob(authz, user, password))[0]


def notes(authc: str = ALICE) -> list[dict]:
    """What the handler noted of each connection's last attempt, oldest first."""
    return [
        record.meta["auth_credentials"][-1]
        for record in ConnectionRecord.objects.filter(authc=authc).order_by("started_at")
    ]


@pytest.fixture
def alice(make_login) -> SmtpLogin:
    return make_login(ALICE, OWN)


@pytest.fixture
def app_password(alice, secret_watch):
    """Make an app password of alice's (watched for leaks): (row, text)."""

    def make(label: str = "Phone", login: SmtpLogin | None = None, **fields):
        row, text = create_app_password(login or alice, label, **fields)
        secret_watch.add(text)
        return row, text

    return make


def test_an_app_password_is_a_password_of_its_login(smtp_server, secret_watch, alice, app_password):
    row, text = app_password()
    assert attempt(smtp_server, secret_watch, ALICE, text) == 235
    # The login's own password still works, and so does AUTH LOGIN and any case of the name.
    assert attempt(smtp_server, secret_watch, ALICE, OWN) == 235
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "LOGIN " + b64("Alice@Example.com"))[0] == 334
        assert client.docmd(b64(text))[0] == 235
    smtp_server.settle()
    row.refresh_from_db()
    alice.refresh_from_db()
    assert row.last_used_at is not None and row.last_used_from == "127.0.0.1"
    assert alice.last_used_at >= row.last_used_at
    assert [n["kind"] for n in notes()] == ["app_password", "password"]
    assert notes()[0] == {
        "kind": "app_password",
        "app_password_id": row.pk,
        "label": "Phone",
        "result": "accepted",
        "attempt": 0,
    }


@pytest.mark.parametrize("state", ["revoked", "expired"])
def test_revoked_and_expired_app_passwords_get_535(
    smtp_server, secret_watch, alice, app_password, state
):
    row, text = app_password()
    if state == "revoked":
        assert row.revoke()
        assert not row.revoke()  # the first revocation is kept
    else:
        AppPassword.objects.filter(pk=row.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
    assert attempt(smtp_server, secret_watch, ALICE, text) == 535
    smtp_server.settle()
    assert notes()[-1]["result"] == state
    row.refresh_from_db()
    assert row.last_used_at is None
    assert ConnectionRecord.objects.get().auth_outcome == "failure"


def test_an_app_password_that_has_not_expired_yet_works(smtp_server, secret_watch, app_password):
    _, text = app_password(expires_at=timezone.now() + timedelta(minutes=5))
    assert attempt(smtp_server, secret_watch, ALICE, text) == 235


def test_a_wrong_secret_behind_a_real_id_gets_535(smtp_server, secret_watch, app_password):
    row, text = app_password()
    forged = text[:-4] + ("aaaa" if not text.endswith("aaaa") else "bbbb")
    assert attempt(smtp_server, secret_watch, ALICE, forged) == 535
    smtp_server.settle()
    assert notes()[-1] == {
        "kind": "app_password",
        "app_password_id": row.pk,
        "label": "Phone",
        "result": "wrong_password",
        "attempt": 0,
    }


def test_an_app_password_of_another_login_gets_535(
    smtp_server, secret_watch, make_login, app_password
):
    bob = make_login(BOB, "bob's own password 2")
    _, bobs = app_password(login=bob)
    assert attempt(smtp_server, secret_watch, ALICE, bobs) == 535
    assert attempt(smtp_server, secret_watch, BOB, bobs) == 235


def test_an_app_password_may_act_only_as_its_login_allows(
    smtp_server, secret_watch, make_login, app_password
):
    carol = make_login(
        "carol@example.com", "carol's own password", may_act_as=("sales@example.com",)
    )
    _, text = app_password(login=carol)
    assert attempt(smtp_server, secret_watch, "carol@example.com", text, "sales@example.com") == 235
    assert attempt(smtp_server, secret_watch, "carol@example.com", text, ALICE) == 535
    smtp_server.settle()
    assert notes("carol@example.com")[-1]["result"] == "authz_not_allowed"


@pytest.mark.parametrize(
    ("site", "login", "own_works"),
    [
        (False, None, True),
        (True, None, False),
        (False, True, False),
        (True, False, True),
    ],
    ids=["default", "site-requires", "login-requires", "login-exempt"],
)
def test_requiring_app_passwords(
    smtp_server, secret_watch, settings, alice, app_password, site, login, own_works
):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "REQUIRE_APP_PASSWORDS": site}
    SmtpLogin.objects.filter(pk=alice.pk).update(require_app_passwords=login)
    _, text = app_password()
    assert attempt(smtp_server, secret_watch, ALICE, OWN) == (235 if own_works else 535)
    assert attempt(smtp_server, secret_watch, ALICE, text) == 235
    if not own_works:
        smtp_server.settle()
        assert notes()[0]["result"] == "app_passwords_only"


def test_a_forced_password_change_refuses_the_old_password_until_a_new_one_is_set(
    smtp_server, secret_watch, alice, app_password
):
    _, text = app_password()
    SmtpLogin.objects.filter(pk=alice.pk).update(must_change_password=True)
    assert attempt(smtp_server, secret_watch, ALICE, OWN) == 535
    assert attempt(smtp_server, secret_watch, ALICE, text) == 235  # app passwords go on
    new = "a brand new password 3"
    secret_watch.add(new)
    form = LoginPasswordForm(SmtpLogin.objects.get(), {"password1": new, "password2": new})
    assert form.is_valid(), form.errors
    form.save()
    assert not SmtpLogin.objects.get().must_change_password
    assert attempt(smtp_server, secret_watch, ALICE, new) == 235
    assert attempt(smtp_server, secret_watch, ALICE, OWN) == 535
    smtp_server.settle()
    assert notes()[0]["result"] == "must_change_password"


def test_an_app_password_hash_is_upgraded_when_the_parameters_change(
    smtp_server, secret_watch, settings, app_password
):
    row, text = app_password()
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "ARGON2": {"time_cost": 2, "memory_cost": 64, "parallelism": 1},
    }
    assert attempt(smtp_server, secret_watch, ALICE, text) == 235
    row.refresh_from_db()
    assert ",t=2," in row.password_hash
    assert attempt(smtp_server, secret_watch, ALICE, text) == 235


def test_a_revocation_while_verifying_wins(alice, app_password):
    row, _ = app_password()
    candidate = service._find(ALICE, ALICE, row.public_id, timezone.now())
    assert candidate.app_password_pk == row.pk and candidate.refusal is None
    row.revoke()  # lands after the lookup, before the success is recorded
    assert service._record_use(candidate, None, "192.0.2.1") is False
    row.refresh_from_db()
    assert row.last_used_at is None


# -- cost and timing -----------------------------------------------------------------

#: Costly enough that one verification takes milliseconds and dominates an attempt.
COSTLY_ARGON2 = {"time_cost": 2, "memory_cost": 8192, "parallelism": 1}
MANY = 30
TRIES = 9


def timed(client, user: str, password: str) -> float:
    started = time.perf_counter()
    code = client.docmd("AUTH", "PLAIN " + plain_blob("", user, password))[0]
    elapsed = time.perf_counter() - started
    assert code == 535, (user, code)
    return elapsed


def test_an_attempt_costs_one_verification_however_many_app_passwords(
    smtp_server, secret_watch, settings, make_login
):
    """Refusals take as long whether the login has no app password or thirty,
    whether it exists, and whatever the app password's state: one argon2 each."""
    settings.KUMOSUBMIT = {**lenient_kumosubmit(settings), "ARGON2": COSTLY_ARGON2}
    make_login(ALICE, OWN)
    bob = make_login(BOB, "bob's own password 2")
    texts = []
    for n in range(MANY):
        row, text = create_app_password(bob, f"device {n}")
        secret_watch.add(text)
        texts.append((row, text))
    revoked_row, revoked = texts[0]
    revoked_row.revoke()
    _, live = texts[-1]
    kinds = {
        "no app passwords": (ALICE, "a wrong password"),
        "30 app passwords": (BOB, "a wrong password"),
        "wrong secret, real id": (
            BOB,
            live[:-4] + ("aaaa" if not live.endswith("aaaa") else "bbbb"),
        ),
        "revoked": (BOB, revoked),
        "unknown id": (BOB, "ksub_aaaaaaaa_" + "a" * 26),
        "unknown login": ("nobody@example.com", live),
    }
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    with quitting(smtp_server.starttls()) as client:
        for user, password in kinds.values():  # warm up
            secret_watch.add_plain("", user, password)
            timed(client, user, password)
        for _ in range(TRIES):
            for kind, (user, password) in kinds.items():
                times[kind].append(timed(client, user, password))
    medians = {kind: statistics.median(samples) for kind, samples in times.items()}
    report = ", ".join(f"{kind} {median * 1000:.1f} ms" for kind, median in medians.items())
    reference = medians["no app passwords"]
    assert reference > 0.003, report  # argon2 dominates, or this would say nothing
    for kind, median in medians.items():
        # Trying all 30 hashes would take 30 times as long; one verification, about 1.
        assert 0.6 < median / reference < 1.6, f"{kind}: {median / reference:.2f} ({report})"
