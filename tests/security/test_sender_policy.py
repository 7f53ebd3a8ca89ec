"""Sender policy after AUTH: MAIL FROM and, optionally, From: (issue 4, item 4)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from kumosubmit.credentials.models import AllowedSender
from kumosubmit.spool.models import Message
from tests.live import plain_blob, quitting

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
NOT_ALLOWED = (553, b"5.7.1 Sender address not allowed for this login")


def session(smtp_server, authc=ALICE, authz=""):
    client = smtp_server.starttls()
    assert client.docmd("AUTH", "PLAIN " + plain_blob(authz, authc, PASSWORD))[0] == 235
    return client


def mail(client, sender: str):
    return client.docmd(f"MAIL FROM:<{sender}>")


def test_a_login_may_send_as_itself_only(smtp_server, make_login):
    make_login(ALICE, PASSWORD)
    with quitting(session(smtp_server)) as client:
        assert mail(client, "bob@example.com") == NOT_ALLOWED
        assert mail(client, "alice@example.org") == NOT_ALLOWED
        assert mail(client, "Alice@Example.COM") == (250, b"2.1.0 Sender OK")
        client.rset()
        assert mail(client, "") == (250, b"2.1.0 Sender OK")  # bounces and receipts


def test_allowed_addresses_and_domains(smtp_server, make_login):
    login = make_login(ALICE, PASSWORD)
    AllowedSender.objects.create(login=login, pattern="Support@Example.net")
    AllowedSender.objects.create(login=login, pattern="@example.org")
    with quitting(session(smtp_server)) as client:
        for sender in ("support@example.net", "anyone@example.org", "x@EXAMPLE.ORG"):
            assert mail(client, sender)[0] == 250, sender
            client.rset()
        assert mail(client, "other@example.net") == NOT_ALLOWED
        assert mail(client, "x@sub.example.org") == NOT_ALLOWED


def test_the_authorization_identity_may_be_used(smtp_server, make_login):
    make_login(ALICE, PASSWORD, may_act_as=("sales@example.com",))
    with quitting(session(smtp_server, authz="sales@example.com")) as client:
        assert (
            client.sendmail("sales@example.com", ["x@example.org"], b"Subject: t\r\n\r\nb\r\n")
            == {}
        )
        assert mail(client, "ceo@example.com") == NOT_ALLOWED
    assert Message.objects.get().mail_from == "sales@example.com"


def test_a_login_that_is_not_an_address_needs_allowed_senders(smtp_server, make_login):
    login = make_login("printer-3rd-floor", PASSWORD)
    with quitting(session(smtp_server, authc="printer-3rd-floor")) as client:
        assert mail(client, "printer@example.com") == NOT_ALLOWED
    AllowedSender.objects.create(login=login, pattern="printer@example.com")
    with quitting(session(smtp_server, authc="printer-3rd-floor")) as client:
        assert mail(client, "printer@example.com")[0] == 250


def test_the_check_can_be_turned_off(smtp_server, make_login, settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "CHECK_SENDER": False}
    make_login(ALICE, PASSWORD)
    with quitting(session(smtp_server)) as client:
        assert mail(client, "anybody@example.net")[0] == 250


@pytest.fixture
def header_check(settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "CHECK_HEADER_FROM": True}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (b"From: Alice <alice@example.com>\r\n", 250),
        (b"From: alice@EXAMPLE.com\r\n", 250),
        (b"From: Mallory <ceo@example.com>\r\n", 550),
        (b"From: alice@example.com, ceo@example.com\r\n", 550),
        (b"Sender: alice@example.com\r\n", 550),  # no From: at all
        (b"From: \r\n", 550),
    ],
)
def test_header_from_is_checked_when_asked(smtp_server, make_login, header_check, headers, code):
    make_login(ALICE, PASSWORD)
    with quitting(session(smtp_server)) as client:
        client.mail(ALICE)
        client.rcpt("bob@example.org")
        reply = client.data(headers + b"Subject: t\r\n\r\nbody\r\n")
    assert reply[0] == code
    if code == 550:
        assert reply[1] == b"5.7.1 From: header address not allowed for this login"
    assert Message.objects.count() == (1 if code == 250 else 0)


def test_header_from_is_not_checked_by_default(smtp_server, make_login):
    make_login(ALICE, PASSWORD)
    with quitting(session(smtp_server)) as client:
        assert (
            client.sendmail(ALICE, ["b@example.org"], b"From: ceo@example.com\r\n\r\nb\r\n") == {}
        )


@pytest.mark.parametrize("pattern", ["alice@example.com", "@example.com", "@mail.example.co.uk"])
def test_valid_patterns(pattern, make_login):
    AllowedSender(login=make_login(ALICE, PASSWORD), pattern=pattern).full_clean()


@pytest.mark.parametrize(
    "pattern", ["example.com", "alice@", "@", "@localhost", "a b@example.com", "@.com"]
)
def test_invalid_patterns(pattern, make_login):
    with pytest.raises(ValidationError):
        AllowedSender(login=make_login(ALICE, PASSWORD), pattern=pattern).full_clean()


def test_allowed_senders_are_edited_in_the_admin(admin_client, make_login):
    login = make_login(ALICE, PASSWORD)
    url = reverse("admin:kumosubmit_smtplogin_change", args=[login.pk])
    page = admin_client.get(url)
    assert b"senders-TOTAL_FORMS" in page.content
    form = {
        "username": ALICE,
        "is_active": "on",
        "identities-TOTAL_FORMS": "0",
        "identities-INITIAL_FORMS": "0",
        "senders-TOTAL_FORMS": "2",
        "senders-INITIAL_FORMS": "0",
        "senders-0-pattern": "@Example.org",
        "senders-1-pattern": "not a pattern",
    }
    response = admin_client.post(url, form)
    assert response.status_code == 200  # the bad row is an error; nothing saved
    assert not AllowedSender.objects.exists()
    form["senders-TOTAL_FORMS"] = "1"
    response = admin_client.post(url, form)
    assert response.status_code == 302
    assert list(login.senders.values_list("pattern", flat=True)) == ["@example.org"]
