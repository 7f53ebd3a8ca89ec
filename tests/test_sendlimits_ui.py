"""Sending limits beyond the SMTP session: the rules, the self-service page, the admin, the
commands, and the optional suspension of a login sending far above its usual rate."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from kumosubmit.credentials.models import SmtpLogin, create_app_password
from kumosubmit.sendlimits.backends import Bucket, DatabaseBackend, now_us, used
from kumosubmit.sendlimits.models import SendRate
from kumosubmit.sendlimits.rules import Rule, RuleError, parse_limits, parse_rules, wider_than
from kumosubmit.sendlimits.sessions import login_buckets
from kumosubmit.spool.models import Message
from tests.live import plain_blob, quitting

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
BODY = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHi\r\n"


# --- the rules and the GCRA arithmetic ------------------------------------------------


def test_rules_in_kumomtas_notation():
    assert Rule.parse("30/minute") == Rule(30, 60)
    assert Rule.parse(" 5 / s ") == Rule(5, 1)
    assert Rule.parse("1000/days") == Rule(1000, 86400)
    assert Rule.parse("2/H") == Rule(2, 3600)
    assert str(Rule(1000, 86400)) == "1000/day"
    assert Rule(1, 3600).describe("MESSAGES") == "1 message per hour"
    assert parse_rules("1000/day, 30/minute") == (Rule(30, 60), Rule(1000, 86400))
    assert parse_rules(None) is None
    for bad in ("30", "30/week", "-1/minute", "0/minute", "x/minute", 30, "30/minute/2"):
        with pytest.raises(RuleError):
            Rule.parse(bad)
    with pytest.raises(RuleError):
        parse_limits({"MESSAGE": ["1/s"]})
    assert parse_limits(None) == {"MESSAGES": None, "RECIPIENTS": None}


def test_an_app_password_rule_must_be_within_the_logins():
    login = (Rule(30, 60), Rule(1000, 86400))
    assert wider_than([Rule(10, 60), Rule(500, 86400)], login) == []
    assert wider_than([Rule(31, 60)], login) == [Rule(31, 60)]
    assert wider_than([Rule(2000, 86400)], login) == [Rule(2000, 86400)]
    assert wider_than([Rule(40, 1)], login) == [Rule(40, 1)]  # a burst beyond the minute's
    assert wider_than([Rule(5000, 604800 // 7)], None) == []


def test_gcra_use_counts_down_at_the_rules_rate():
    rule = Rule(20, 60)  # one every 3 s
    now = 1_000_000_000_000
    assert used(rule, None, now) == 0
    assert used(rule, now + 60_000_000, now) == 20
    assert used(rule, now + 60_000_000, now + 3_000_000) == 19
    assert used(rule, now + 1, now) == 1
    assert used(rule, now - 1, now) == 0


def test_a_reservation_is_all_or_nothing(make_login):
    login = make_login(ALICE, PASSWORD)
    backend = DatabaseBackend()
    tight = Bucket(f"login:{login.pk}", "MESSAGES", Rule(2, 60), login.pk)
    loose = Bucket(f"login:{login.pk}", "MESSAGES", Rule(100, 3600), login.pk)
    now = now_us()
    assert backend.reserve([(tight, 1), (loose, 1)], now) is None
    assert backend.reserve([(tight, 1), (loose, 1)], now) is None
    refusal = backend.reserve([(tight, 1), (loose, 1)], now)
    assert refusal is not None and refusal.bucket == tight
    assert refusal.retry_after == pytest.approx(30.0)
    # The refused reservation took nothing from the rule that had room.
    assert backend.usage([tight, loose], now) == {tight: 2, loose: 2}
    backend.release([(tight, 1), (loose, 1)], now)
    assert backend.usage([tight, loose], now) == {tight: 1, loose: 1}
    assert backend.claim_notice(tight, now) is True
    assert backend.claim_notice(tight, now + 59_000_000) is False  # the same window
    assert backend.claim_notice(tight, now + 60_000_000) is True  # the next one


# --- the self-service page ------------------------------------------------------------


@pytest.fixture
def owner_client(make_login):
    user = get_user_model().objects.create_user("ann", "ann@example.org", "x")
    login = make_login(ALICE, PASSWORD)
    login.owner = user
    login.message_limits = ["1000/day"]
    login.save()
    client = Client()
    client.force_login(user)
    return login, client


def send(smtp_server, password, count):
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, password))[0] == 235
        for _ in range(count):
            client.sendmail(ALICE, ["bob@example.org"], BODY)
    smtp_server.settle()  # what the connection held ahead is given back at its end


def test_the_page_shows_each_credentials_use(smtp_server, owner_client, secret_watch, settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "SEND_LIMITS": {"RECIPIENTS": ["5000/day"]}}
    login, client = owner_client
    app_password, secret = create_app_password(login, "Phone")
    secret_watch.add(secret)
    app_password.message_limits = ["10/hour"]
    app_password.save()
    send(smtp_server, PASSWORD, 3)
    send(smtp_server, secret, 2)
    page = client.get(reverse("credentials:login", args=[login.pk])).content.decode()
    assert "Sending limits" in page
    assert "messages per day: 5 of 1000" in page  # the login's, all its passwords together
    assert "messages per hour: 2 of 10" in page  # the Phone's own
    assert "recipients per day: 5 of 5000" in page  # the site's default for recipients


def test_an_owner_sets_tighter_limits_for_an_app_password(owner_client):
    login, client = owner_client
    app_password, _secret = create_app_password(login, "Laptop")
    path = reverse("credentials:app_password_limits", args=[login.pk, app_password.pk])
    assert client.get(path).status_code == 200
    response = client.post(path, {"message_limits": "2000/day", "recipient_limits": ""})
    assert response.status_code == 200
    assert "would allow more than the login" in response.content.decode()
    response = client.post(path, {"message_limits": "none", "recipient_limits": ""})
    assert "keep only the login" in response.content.decode()
    response = client.post(path, {"message_limits": "10/hour, 100/day", "recipient_limits": ""})
    assert response.status_code == 302
    app_password.refresh_from_db()
    assert app_password.message_limits == ["10/hour", "100/day"]
    assert app_password.recipient_limits is None
    # Someone else's app password is not found.
    other = get_user_model().objects.create_user("bob", "bob@example.org", "x")
    stranger = Client()
    stranger.force_login(other)
    assert stranger.post(path, {"message_limits": "1/day"}).status_code == 404


# --- the admin ------------------------------------------------------------------------


def test_the_admin_edits_limits_and_shows_who_is_near_one(
    smtp_server, admin_client, make_login, settings
):
    login = make_login(ALICE, PASSWORD)
    change = reverse("admin:kumosubmit_smtplogin_change", args=[login.pk])
    form = admin_client.get(change).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None}
    data.update(
        {
            "username": ALICE,
            "is_active": "on",
            "message_limits": "5/hour",
            "recipient_limits": "none",
            "identities-TOTAL_FORMS": "0",
            "identities-INITIAL_FORMS": "0",
            "senders-TOTAL_FORMS": "0",
            "senders-INITIAL_FORMS": "0",
        }
    )
    data.pop("owner", None)
    data.pop("require_app_passwords", None)
    response = admin_client.post(change, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    login.refresh_from_db()
    assert login.message_limits == ["5/hour"] and login.recipient_limits == []
    send(smtp_server, PASSWORD, 4)

    page = admin_client.get(change).content.decode()
    assert "messages per hour: 4 of 5" in page
    changelist = admin_client.get(reverse("admin:kumosubmit_smtplogin_changelist"))
    assert "<strong>messages per hour: 4 of 5</strong>" in changelist.content.decode()
    states = reverse("admin:kumosubmit_sendlimitstate_changelist")
    near = admin_client.get(states + "?use=near").content.decode()
    assert ALICE in near and "per hour: 4 of 5" in near and "80%" in near
    assert ALICE not in admin_client.get(states + "?use=full").content.decode()
    send(smtp_server, PASSWORD, 1)
    assert ALICE in admin_client.get(states + "?use=full").content.decode()


# --- the commands ---------------------------------------------------------------------


def test_commands_set_a_logins_limits(secret_watch):
    secret_watch.add(PASSWORD)
    out = io.StringIO()
    call_command(
        "createsmtpuser",
        ALICE,
        "--password-stdin",
        "--message-limits",
        "1000/day,30/minute",
        "--recipient-limits",
        "none",
        stdin=io.StringIO(PASSWORD),
        stdout=out,
    )
    assert "Sending limits: messages: 30/minute, 1000/day; recipients: no limit." in out.getvalue()
    login = SmtpLogin.objects.get()
    assert (login.message_limits, login.recipient_limits) == (["30/minute", "1000/day"], [])
    hash_before = login.password_hash
    call_command(
        "changesmtppassword",
        ALICE,
        "--keep-password",
        "--message-limits",
        "default",
        stdout=io.StringIO(),
    )
    login.refresh_from_db()
    assert login.message_limits is None and login.password_hash == hash_before
    with pytest.raises(CommandError, match="--message-limits: '30/fortnight'"):
        call_command(
            "changesmtppassword", ALICE, "--keep-password", "--message-limits", "30/fortnight"
        )
    with pytest.raises(CommandError, match="give --message-limits"):
        call_command("changesmtppassword", ALICE, "--keep-password")


# --- suspicion ------------------------------------------------------------------------


def test_a_login_far_above_its_usual_rate_is_suspended_until_lifted(
    smtp_server, admin_client, make_login, settings
):
    settings.ADMINS = [("Postmaster", "postmaster@example.com")]
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "SUSPEND_FACTOR": 2, "SUSPEND_MIN_RATE": "1/hour"}
    login = make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, PASSWORD))[0] == 235
        codes = []
        for _ in range(4):
            code = client.mail(ALICE)[0]
            codes.append(code)
            if code == 250:
                client.rcpt("bob@example.org")
                client.data(BODY)
        # The third message makes 3 an hour, over twice the floor of 1: this connection
        # and every later one are refused at MAIL FROM.
        assert codes == [250, 250, 250, 451]
        code, text = client.mail(ALICE)
    assert code == 451 and b"4.7.1 This login is suspended" in text
    login.refresh_from_db()
    assert login.suspended_at is not None and "3 messages an hour" in login.suspended_reason
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, PASSWORD))[0] == 235
        assert client.mail(ALICE)[0] == 451
    notice = Message.objects.get(meta__kumosubmit_notice="suspension")
    assert notice.rcpt_tos == ["postmaster@example.com"]
    assert b"Login suspended: alice@example.com" in bytes(notice.content)

    changelist = reverse("admin:kumosubmit_smtplogin_changelist")
    assert ALICE in admin_client.get(changelist + "?suspended=yes").content.decode()
    response = admin_client.post(
        changelist, {"action": "lift_suspension", "_selected_action": [login.pk]}
    )
    assert response.status_code == 302
    login.refresh_from_db()
    assert login.suspended_at is None and not SendRate.objects.exists()
    send(smtp_server, PASSWORD, 1)


def test_buckets_follow_the_login_and_the_site(make_login, settings):
    login = make_login(ALICE, PASSWORD)
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "SEND_LIMITS": {"MESSAGES": ["3/minute"]}}
    assert [str(b.rule) for b in login_buckets(login)] == ["3/minute"]
    login.message_limits = []
    assert login_buckets(login) == []
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "SEND_LIMITS": None}
    login.message_limits, login.recipient_limits = None, ["10/day"]
    assert [(b.kind, str(b.rule)) for b in login_buckets(login)] == [("RECIPIENTS", "10/day")]


def test_reservations_made_together_are_each_decided_on_their_own(make_login):
    alice, bob = make_login(ALICE, PASSWORD), make_login("bob@example.com", "another one")
    backend = DatabaseBackend()
    a = Bucket(f"login:{alice.pk}", "MESSAGES", Rule(2, 60), alice.pk)
    a_day = Bucket(f"login:{alice.pk}", "MESSAGES", Rule(100, 86400), alice.pk)
    b = Bucket(f"login:{bob.pk}", "MESSAGES", Rule(1, 60), bob.pk)
    now = now_us()
    results = backend.reserve_many(
        [[(a, 1), (a_day, 1)], [(b, 1)], [(a, 1), (a_day, 1)], [(b, 1)], [(a, 1), (a_day, 1)]],
        now,
    )
    assert [r is None for r in results] == [True, True, True, False, False]
    assert results[3].bucket == b and results[4].bucket == a
    # The refused third reservation of alice took nothing from her daily rule.
    assert backend.usage([a, a_day, b], now) == {a: 2, a_day: 2, b: 1}
