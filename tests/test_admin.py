"""The admin: logins with masked hashes and a password form, read-only audit and messages."""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import re
from datetime import datetime, timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from kumosubmit.admin import CONTENT_PREVIEW_BYTES, hash_summary
from kumosubmit.audit.models import AuthOutcome, ConnectionRecord
from kumosubmit.credentials.hashing import verify
from kumosubmit.credentials.models import (
    AppPassword,
    AuthFailureCounter,
    AuthorizedIdentity,
    SmtpLogin,
    create_app_password,
)
from kumosubmit.spool.models import Message

PASSWORD = "tulip-orbit-velvet-42"
MISMATCH = ["The two password fields didn\u2019t match."]  # Django's wording
NEW_PASSWORD = "granite-harbor-lemon-77"
NO_INLINES = {
    "identities-TOTAL_FORMS": "0",
    "identities-INITIAL_FORMS": "0",
    "identities-MIN_NUM_FORMS": "0",
    "identities-MAX_NUM_FORMS": "1000",
    "senders-TOTAL_FORMS": "0",
    "senders-INITIAL_FORMS": "0",
    "senders-MIN_NUM_FORMS": "0",
    "senders-MAX_NUM_FORMS": "1000",
}
_ids = itertools.count()


def url(name: str, *args: object) -> str:
    return reverse(f"admin:kumosubmit_{name}", args=args)


def make_record(**fields: object) -> ConnectionRecord:
    now = timezone.now()
    defaults = {
        "conn_id": f"c{next(_ids)}",
        "started_at": now - timedelta(seconds=3),
        "ended_at": now,
        "listener": "starttls",
        "peer_address": "192.0.2.10",
        "tls_version": "TLSv1.3",
        "ehlo_name": "client.example",
        "authc": "alice@example.com",
        "auth_outcome": AuthOutcome.SUCCESS,
        "auth_attempts": 1,
        "meta": {"client": {"name": "Thunderbird"}, "ok": True},
    }
    return ConnectionRecord.objects.create(**{**defaults, **fields})


def make_message(content: bytes = b"Subject: hi\r\n\r\nHello.\r\n", **fields: object) -> Message:
    defaults = {
        "queue_id": f"q{next(_ids)}",
        "mail_from": "alice@example.com",
        "rcpt_tos": ["bob@example.com", "carol@example.com"],
        "size": len(content),
        "content": content,
        "authz_id": "alice@example.com",
        "authn_id": "alice@example.com",
        "conn_id": "c-1",
        "meta": {"spool": {"note": "kept"}},
    }
    return Message.objects.create(**{**defaults, **fields})


def results(response) -> list:
    return list(response.context["cl"].result_list)


def add_login(client, password1: str, password2: str, username: str = "Bob@Example.com"):
    return client.post(
        url("smtplogin_add"),
        {
            "username": username,
            "password1": password1,
            "password2": password2,
            "is_active": "on",
            **NO_INLINES,
        },
    )


# --- pages render ------------------------------------------------------------


def test_site_is_named(admin_client):
    response = admin_client.get(reverse("admin:index"))
    assert b"kumosubmit administration" in response.content
    assert b"<title>Site administration | kumosubmit administration</title>" in response.content


def test_login_pages_render(admin_client, make_login):
    login = make_login(may_act_as=("shared@example.com",))
    assert admin_client.get(url("smtplogin_changelist")).status_code == 200
    assert admin_client.get(url("smtplogin_add")).status_code == 200
    response = admin_client.get(url("smtplogin_change", login.pk))
    assert response.status_code == 200
    assert b"shared@example.com" in response.content  # the identities inline
    assert admin_client.get(url("smtplogin_password_change", login.pk)).status_code == 200


@pytest.mark.parametrize(
    ("name", "make"), [("connectionrecord", make_record), ("message", make_message)]
)
def test_log_pages_render_read_only(admin_client, name, make):
    obj = make()
    assert admin_client.get(url(f"{name}_changelist")).status_code == 200
    response = admin_client.get(url(f"{name}_change", obj.pk))
    assert response.status_code == 200
    assert b'name="_save"' not in response.content  # view only: no Save button


# --- SmtpLogin: adding ----------------------------------------------------------


def test_add_login_hashes_the_password(admin_client, secret_watch):
    secret_watch.add(PASSWORD)
    response = add_login(admin_client, PASSWORD, PASSWORD)
    assert response.status_code == 302
    login = SmtpLogin.objects.get()
    assert login.username == "bob@example.com"
    assert login.password_hash.startswith("$argon2id$")
    assert PASSWORD not in login.password_hash
    assert verify(login.password_hash, PASSWORD) == (True, False)
    assert login.password_changed_at is not None
    # Passwords never reach an error report (django.views.debug filters these).
    assert response.wsgi_request.sensitive_post_parameters == ("password1", "password2")


def test_add_login_with_mismatched_passwords_is_refused(admin_client, secret_watch):
    secret_watch.add(PASSWORD, NEW_PASSWORD)
    response = add_login(admin_client, PASSWORD, NEW_PASSWORD)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["password2"] == MISMATCH
    assert PASSWORD.encode() not in response.content  # PasswordInput does not echo it
    assert not SmtpLogin.objects.exists()


@pytest.mark.parametrize(("password", "field"), [("", "password1"), ("abc123", "password2")])
def test_add_login_refuses_empty_or_weak_password(admin_client, password, field):
    response = add_login(admin_client, password, password)
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not SmtpLogin.objects.exists()


def test_add_login_usernames_are_unique_ignoring_case(admin_client, make_login, secret_watch):
    make_login("bob@example.com")
    secret_watch.add(PASSWORD)
    response = add_login(admin_client, PASSWORD, PASSWORD, username="BOB@example.com")
    assert response.status_code == 200
    assert "username" in response.context["adminform"].form.errors
    assert SmtpLogin.objects.count() == 1


# --- SmtpLogin: changing --------------------------------------------------------


def test_change_page_shows_hash_masked_only(admin_client, make_login):
    login = make_login()
    response = admin_client.get(url("smtplogin_change", login.pk))
    content = response.content.decode()
    salt, digest = login.password_hash.rsplit("$", 2)[1:]
    assert login.password_hash not in content
    assert salt not in content
    assert digest not in content
    summary = hash_summary(login.password_hash)
    assert summary.startswith(f"argon2id m=64 t=1 p=1 salt: {salt[:4]}*")
    assert f"hash: {digest[:4]}*" in summary
    assert summary in content
    link = f'<a href="{url("smtplogin_password_change", login.pk)}">'
    assert f"{link}change the password using this form</a>" in content


@pytest.mark.parametrize("encoded", ["", "plain", "$argon2id$v=19$m=64,t=1,p=1$truncated"])
def test_unusable_hash_summary(encoded):
    assert hash_summary(encoded) == "No usable password (unknown hash format)."


def test_change_form_ignores_a_posted_hash(admin_client, make_login):
    login = make_login()
    old_hash = login.password_hash
    response = admin_client.post(
        url("smtplogin_change", login.pk),
        {
            "username": "alice@example.com",
            "owner": "",
            "password_hash": "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
            "password": "attacker",
            **NO_INLINES,
        },
    )
    assert response.status_code == 302
    login.refresh_from_db()
    assert login.password_hash == old_hash
    assert login.is_active is False  # the POST was applied, without the hash


def test_change_form_adds_identities(admin_client, make_login):
    login = make_login()
    data = {
        "username": "alice@example.com",
        "is_active": "on",
        **NO_INLINES,
        "identities-TOTAL_FORMS": "1",
        "identities-0-identity": "Shared@Example.com",
    }
    assert admin_client.post(url("smtplogin_change", login.pk), data).status_code == 302
    assert login.may_act_as("shared@example.com")
    assert AuthorizedIdentity.objects.get().identity == "shared@example.com"


def test_changelist_refuses_lookups_on_the_hash(admin_client, make_login):
    make_login()
    response = admin_client.get(url("smtplogin_changelist") + "?password_hash__startswith=$")
    assert response.status_code == 400


# --- SmtpLogin: password form ---------------------------------------------------


def test_password_form_changes_the_hash(admin_client, make_login, secret_watch):
    login = make_login(password=PASSWORD)
    secret_watch.add(NEW_PASSWORD)
    response = admin_client.post(
        url("smtplogin_password_change", login.pk),
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )
    assert response.status_code == 302
    assert response["Location"] == url("smtplogin_change", login.pk)
    assert response.wsgi_request.sensitive_post_parameters == ("password1", "password2")
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "Password changed successfully."
    ]
    login.refresh_from_db()
    assert verify(login.password_hash, PASSWORD) == (False, False)
    assert verify(login.password_hash, NEW_PASSWORD) == (True, False)
    entry = LogEntry.objects.get(object_id=str(login.pk))
    assert entry.get_change_message() == "Changed password."


def test_password_form_mismatch_is_an_error(admin_client, make_login, secret_watch):
    login = make_login(password=PASSWORD)
    old_hash = login.password_hash
    secret_watch.add(NEW_PASSWORD, "granite-harbor-lemon-78")
    response = admin_client.post(
        url("smtplogin_password_change", login.pk),
        {"password1": NEW_PASSWORD, "password2": "granite-harbor-lemon-78"},
    )
    assert response.status_code == 200
    assert response.context["form"].errors["password2"] == MISMATCH
    assert NEW_PASSWORD.encode() not in response.content
    login.refresh_from_db()
    assert login.password_hash == old_hash
    assert not LogEntry.objects.exists()


def test_password_form_needs_change_permission(client, make_login):
    login = make_login()
    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_smtplogin"))
    client.force_login(viewer)
    assert client.get(url("smtplogin_change", login.pk)).status_code == 200
    response = client.post(
        url("smtplogin_password_change", login.pk),
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )
    assert response.status_code == 403


def test_password_form_for_a_missing_login_is_404(admin_client):
    assert admin_client.get(url("smtplogin_password_change", 999)).status_code == 404


def test_admin_pages_never_show_a_password_set_through_them(admin_client, secret_watch):
    secret_watch.add(PASSWORD, NEW_PASSWORD)
    add_login(admin_client, PASSWORD, PASSWORD)
    login = SmtpLogin.objects.get()
    admin_client.post(
        url("smtplogin_password_change", login.pk),
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )
    for page in (
        url("smtplogin_changelist"),
        url("smtplogin_change", login.pk),
        url("smtplogin_history", login.pk),
        url("smtplogin_password_change", login.pk),
        reverse("admin:index"),
    ):
        response = admin_client.get(page)
        assert response.status_code == 200
        secret_watch.assert_absent_from(response.content.decode(), page)
    # The secret_watch fixture then checks every table (LogEntry too) and the logs.


# --- SmtpLogin: actions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "before", "after"), [("activate", False, True), ("deactivate", True, False)]
)
def test_bulk_actions(admin_client, make_login, action, before, after):
    logins = [make_login(f"u{i}@example.com", is_active=before) for i in range(2)]
    other = make_login("other@example.com", is_active=after)
    response = admin_client.post(
        url("smtplogin_changelist"),
        {"action": action, "_selected_action": [login.pk for login in [*logins, other]]},
        follow=True,
    )
    assert f"2 logins were {action}d." in [str(m) for m in response.context["messages"]]
    assert set(SmtpLogin.objects.values_list("is_active", flat=True)) == {after}
    assert LogEntry.objects.count() == 2  # the one already in that state is not logged


# --- audit log --------------------------------------------------------------------


def test_audit_log_is_read_only(admin_client):
    record = make_record()
    assert admin_client.get(url("connectionrecord_add")).status_code == 403
    response = admin_client.post(
        url("connectionrecord_change", record.pk), {"authc": "mallory", "auth_outcome": "failure"}
    )
    assert response.status_code == 403
    assert (
        admin_client.post(url("connectionrecord_delete", record.pk), {"post": "yes"}).status_code
        == 403
    )
    record.refresh_from_db()
    assert (record.authc, record.auth_outcome) == ("alice@example.com", "success")
    changelist = admin_client.get(url("connectionrecord_changelist"))
    assert "delete_selected" not in changelist.context["cl"].model_admin.get_actions(
        changelist.wsgi_request
    )


def test_audit_detail_shows_conn_meta_pretty(admin_client):
    record = make_record(meta={"b": 1, "a": {"nested": "<x>"}})
    content = admin_client.get(url("connectionrecord_change", record.pk)).content.decode()
    pretty = '{\n  "a": {\n    "nested": "<x>"\n  },\n  "b": 1\n}'
    assert f"<pre>{escape(pretty)}</pre>" in content
    assert "192.0.2.10" in content
    assert "TLSv1.3" in content


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("carol@example", {"carol"}),
        ("CAROL@EXAMPLE.COM", {"carol"}),
        ("198.51.100.7", {"v4"}),
        ("198.51.100", {"v4"}),
        ("2001:db8::", {"v6"}),
        ("nobody", set()),
    ],
)
def test_audit_search(admin_client, term, expected):
    make_record(conn_id="carol", authc="carol@example.com", peer_address="192.0.2.1")
    make_record(conn_id="v4", authc="dave@example.com", peer_address="198.51.100.7")
    make_record(conn_id="v6", authc="erin@example.com", peer_address="2001:db8::25")
    response = admin_client.get(url("connectionrecord_changelist"), {"q": term})
    assert response.status_code == 200
    assert {r.conn_id for r in results(response)} == expected


def test_audit_filters(admin_client):
    make_record(conn_id="ok", auth_outcome=AuthOutcome.SUCCESS)
    make_record(conn_id="bad", auth_outcome=AuthOutcome.FAILURE, listener="implicit")
    make_record(conn_id="old", started_at=timezone.now() - timedelta(days=30))
    changelist = url("connectionrecord_changelist")
    response = admin_client.get(changelist, {"auth_outcome__exact": "failure"})
    assert {r.conn_id for r in results(response)} == {"bad"}
    response = admin_client.get(changelist, {"listener": "implicit"})
    assert {r.conn_id for r in results(response)} == {"bad"}
    since = str(timezone.now() - timedelta(days=7))
    response = admin_client.get(changelist, {"started_at__gte": since})
    assert {r.conn_id for r in results(response)} == {"ok", "bad"}


# --- messages ---------------------------------------------------------------------


def test_messages_are_read_only(admin_client):
    message = make_message()
    assert admin_client.get(url("message_add")).status_code == 403
    response = admin_client.post(url("message_change", message.pk), {"mail_from": "x@evil.example"})
    assert response.status_code == 403
    message.refresh_from_db()
    assert message.mail_from == "alice@example.com"


def test_message_changelist_skips_content(admin_client):
    make_message(queue_id="Q1")
    response = admin_client.get(url("message_changelist"))
    (row,) = results(response)
    assert "content" in row.get_deferred_fields()
    assert b"bob@example.com, carol@example.com" in response.content


def test_message_search_and_filter(admin_client):
    make_message(queue_id="AAA1", mail_from="alice@example.com", authz_id="alice@example.com")
    make_message(queue_id="BBB2", mail_from="bounce@lists.example", authz_id="shared@example.com")
    changelist = url("message_changelist")
    for term, expected in [("aaa1", {"AAA1"}), ("lists.example", {"BBB2"}), ("shared@", {"BBB2"})]:
        response = admin_client.get(changelist, {"q": term})
        assert {m.queue_id for m in results(response)} == expected
    tomorrow = str(timezone.now() + timedelta(days=1))
    response = admin_client.get(changelist, {"received_at__gte": tomorrow})
    assert results(response) == []


def test_message_detail_shows_text_and_meta(admin_client):
    message = make_message(b"Subject: caf\xc3\xa9 \xff\r\n\r\n<b>Hello</b>\r\n")
    content = admin_client.get(url("message_change", message.pk)).content.decode()
    assert "Subject: café \ufffd" in content  # invalid UTF-8 is replaced, not an error
    assert "&lt;b&gt;Hello&lt;/b&gt;" in content
    pretty = '{\n  "spool": {\n    "note": "kept"\n  }\n}'
    assert f"<pre>{escape(pretty)}</pre>" in content
    assert "Showing the first" not in content


def test_message_detail_truncates_big_content(admin_client):
    body = b"Subject: big\r\n\r\n" + b"x" * CONTENT_PREVIEW_BYTES + b"TAIL-MARKER"
    message = make_message(body)
    content = admin_client.get(url("message_change", message.pk)).content.decode()
    assert f"Showing the first {CONTENT_PREVIEW_BYTES} of {len(body)} bytes." in content
    assert "Subject: big" in content
    assert "TAIL-MARKER" not in content


# --- failed-AUTH counters and blocks ------------------------------------------------


def make_counter(kind: str = "address", value: str = "192.0.2.66", **fields) -> AuthFailureCounter:
    now = timezone.now()
    defaults = {
        "failures": 10,
        "first_failure_at": now - timedelta(minutes=5),
        "last_failure_at": now - timedelta(minutes=1),
        "blocked_until": now + timedelta(minutes=14),
    }
    return AuthFailureCounter.objects.create(kind=kind, value=value, **{**defaults, **fields})


def test_failure_counters_are_listed_read_only(admin_client):
    blocked = make_counter()
    response = admin_client.get(url("authfailurecounter_changelist"))
    assert response.status_code == 200
    assert results(response) == [blocked]
    content = response.content.decode()
    assert "192.0.2.66" in content
    assert 'alt="True"' in content  # "blocked now", as an icon
    response = admin_client.get(url("authfailurecounter_change", blocked.pk))
    assert response.status_code == 200
    assert b'name="_save"' not in response.content
    assert admin_client.get(url("authfailurecounter_add")).status_code == 403
    response = admin_client.post(
        url("authfailurecounter_change", blocked.pk), {"failures": "0", "blocked_until": ""}
    )
    assert response.status_code == 403
    blocked.refresh_from_db()
    assert blocked.failures == 10


def test_failure_counters_filter_by_blocked_now_and_search(admin_client):
    make_counter(value="192.0.2.66")
    make_counter(value="198.51.100.1", blocked_until=None, failures=2)
    make_counter(value="198.51.100.2", blocked_until=timezone.now() - timedelta(seconds=1))
    make_counter(kind="login", value="alice@example.com", failures=25)
    changelist = url("authfailurecounter_changelist")
    response = admin_client.get(changelist, {"blocked": "yes"})
    assert {c.value for c in results(response)} == {"192.0.2.66", "alice@example.com"}
    response = admin_client.get(changelist, {"blocked": "no"})
    assert {c.value for c in results(response)} == {"198.51.100.1", "198.51.100.2"}
    response = admin_client.get(changelist, {"kind__exact": "login"})
    assert {c.value for c in results(response)} == {"alice@example.com"}
    response = admin_client.get(changelist, {"q": "198.51.100"})
    assert {c.value for c in results(response)} == {"198.51.100.1", "198.51.100.2"}


def test_lift_action_resets_counters_and_logs_it(admin_client, admin_user):
    address, login = make_counter(), make_counter(kind="login", value="alice@example.com")
    untouched = make_counter(value="203.0.113.9")
    response = admin_client.post(
        url("authfailurecounter_changelist"),
        {"action": "lift_blocks", "_selected_action": [address.pk, login.pk]},
        follow=True,
    )
    assert "2 counters were reset." in [str(m) for m in response.context["messages"]]
    for counter in (address, login):
        counter.refresh_from_db()
        assert (counter.failures, counter.blocked_until, counter.first_failure_at) == (
            0,
            None,
            None,
        )
        assert not counter.is_blocked()
        assert counter.last_failure_at is not None  # kept, for the record
    untouched.refresh_from_db()
    assert untouched.is_blocked()
    entries = LogEntry.objects.filter(user=admin_user)
    assert sorted(int(e.object_id) for e in entries) == [address.pk, login.pk]


def test_lifting_and_deleting_need_the_delete_permission(client, db):
    counter = make_counter()
    operator = User.objects.create_user("operator", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="view_authfailurecounter"))
    client.force_login(operator)
    changelist = url("authfailurecounter_changelist")
    response = client.get(changelist)
    assert response.status_code == 200
    assert "lift_blocks" not in response.context["cl"].model_admin.get_actions(
        response.wsgi_request
    )
    client.post(changelist, {"action": "lift_blocks", "_selected_action": [counter.pk]})
    assert (
        client.post(url("authfailurecounter_delete", counter.pk), {"post": "yes"}).status_code
        == 403
    )
    counter.refresh_from_db()
    assert counter.is_blocked()
    operator.user_permissions.add(Permission.objects.get(codename="delete_authfailurecounter"))
    response = client.post(
        changelist, {"action": "lift_blocks", "_selected_action": [counter.pk]}, follow=True
    )
    assert "1 counter was reset." in [str(m) for m in response.context["messages"]]
    counter.refresh_from_db()
    assert not counter.is_blocked()


def test_failure_counter_can_be_deleted(admin_client):
    counter = make_counter()
    response = admin_client.post(url("authfailurecounter_delete", counter.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not AuthFailureCounter.objects.exists()


def test_audit_log_filters_blocked_attempts(admin_client):
    make_record(conn_id="ok")
    make_record(conn_id="refused", auth_outcome=AuthOutcome.BLOCKED)
    response = admin_client.get(
        url("connectionrecord_changelist"), {"auth_outcome__exact": "blocked"}
    )
    assert {r.conn_id for r in results(response)} == {"refused"}
    assert b"blocked" in response.content


# --- operator tools for many logins ---------------------------------------------------


def post_action(client, changelist: str, action: str, objects) -> list[str]:
    response = client.post(
        changelist, {"action": action, "_selected_action": [o.pk for o in objects]}, follow=True
    )
    return [str(m) for m in response.context["messages"]]


def test_force_password_change_action(admin_client, make_login):
    logins = [make_login(f"u{i}@example.com") for i in range(2)]
    already = make_login("already@example.com")
    SmtpLogin.objects.filter(pk=already.pk).update(must_change_password=True)
    untouched = make_login("untouched@example.com")
    messages = post_action(
        admin_client, url("smtplogin_changelist"), "force_password_change", [*logins, already]
    )
    assert messages[0].startswith("2 logins must get a new password")
    assert set(
        SmtpLogin.objects.filter(must_change_password=True).values_list("username", flat=True)
    ) == {"u0@example.com", "u1@example.com", "already@example.com"}
    assert not SmtpLogin.objects.get(pk=untouched.pk).must_change_password
    assert LogEntry.objects.count() == 2
    # Setting a password in the admin ends it.
    admin_client.post(
        url("smtplogin_password_change", logins[0].pk),
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )
    assert not SmtpLogin.objects.get(pk=logins[0].pk).must_change_password


def test_lift_blocks_action_on_logins(admin_client, make_login, client):
    alice, bob = make_login(), make_login("bob@example.com")
    own = make_counter(kind="login", value="alice@example.com", failures=25)
    pair = make_counter(kind="pair", value="192.0.2.1 alice@example.com", blocked_until=None)
    other_pair = make_counter(kind="pair", value="192.0.2.1 malice@example.com", blocked_until=None)
    bobs = make_counter(kind="login", value="bob@example.com")
    address = make_counter(value="192.0.2.1")
    messages = post_action(admin_client, url("smtplogin_changelist"), "lift_blocks", [alice])
    assert messages == ["2 counters were reset."]
    for counter in (own, pair):
        counter.refresh_from_db()
        assert (counter.failures, counter.blocked_until) == (0, None)
    for counter in (other_pair, bobs, address):
        counter.refresh_from_db()
        assert counter.failures == 10
    assert bobs.is_blocked() and address.is_blocked()
    assert LogEntry.objects.count() == 2
    # Lifting a block needs the counters' delete permission, as on their own page.
    operator = User.objects.create_user("operator", is_staff=True)
    operator.user_permissions.add(
        Permission.objects.get(codename="view_smtplogin"),
        Permission.objects.get(codename="change_smtplogin"),
    )
    client.force_login(operator)
    response = client.get(url("smtplogin_changelist"))
    actions = response.context["cl"].model_admin.get_actions(response.wsgi_request)
    assert "lift_blocks" not in actions
    assert "force_password_change" in actions
    client.post(
        url("smtplogin_changelist"), {"action": "lift_blocks", "_selected_action": [bob.pk]}
    )
    bobs.refresh_from_db()
    assert bobs.is_blocked()


def test_login_page_links_to_its_app_passwords_blocks_and_audit_rows(admin_client, make_login):
    alice = make_login()
    make_login("bob@example.com")
    phone, phone_password = create_app_password(alice, "Phone")
    old, _ = create_app_password(alice, "Old")
    old.revoke()
    make_counter(kind="login", value="alice@example.com")
    make_counter(kind="pair", value="192.0.2.9 alice@example.com", blocked_until=None)
    make_counter(kind="login", value="bob@example.com")
    make_record(conn_id="mine", authc="alice@example.com")
    make_record(conn_id="theirs", authc="bob@example.com")
    response = admin_client.get(url("smtplogin_change", alice.pk))
    content = response.content.decode()
    assert phone.hint in content and "Phone" in content
    assert phone.password_hash not in content and phone_password not in content
    assert "App passwords (1 live of 2)" in content
    assert "(1 block in force)" in content
    links = dict(
        (text, href)
        for href, text in re.findall(r'<li><a href="([^"]+)">([^<]+)</a></li>', content)
    )
    apps = admin_client.get(html.unescape(links["App passwords (1 live of 2)"]))
    assert {p.label for p in results(apps)} == {"Phone", "Old"}
    counters = admin_client.get(
        html.unescape(links["Failed-AUTH counters and blocks (1 block in force)"])
    )
    assert {c.value for c in results(counters)} == {
        "alice@example.com",
        "192.0.2.9 alice@example.com",
    }
    audit = admin_client.get(
        html.unescape(links["Audit log: connections that authenticated as this login"])
    )
    assert [r.conn_id for r in results(audit)] == ["mine"]


def test_policy_fields_on_the_change_form(admin_client, make_login):
    login = make_login()
    response = admin_client.get(url("smtplogin_change", login.pk))
    assert b"As the site setting (REQUIRE_APP_PASSWORDS)" in response.content
    data = {
        "username": login.username,
        "is_active": "on",
        "require_app_passwords": "True",
        "must_change_password": "on",
        **NO_INLINES,
    }
    assert admin_client.post(url("smtplogin_change", login.pk), data).status_code == 302
    login.refresh_from_db()
    assert (login.require_app_passwords, login.must_change_password) == (True, True)
    assert login.requires_app_passwords()
    data.update(require_app_passwords="", must_change_password="")
    assert admin_client.post(url("smtplogin_change", login.pk), data).status_code == 302
    login.refresh_from_db()
    assert (login.require_app_passwords, login.must_change_password) == (None, False)
    response = admin_client.get(
        url("smtplogin_changelist"), {"require_app_passwords__isnull": "True"}
    )
    assert results(response) == [login]


def test_app_passwords_admin_lists_filters_and_revokes(admin_client, make_login, secret_watch):
    alice, bob = make_login(), make_login("bob@example.com")
    live, text = create_app_password(alice, "Phone")
    secret_watch.add(text)
    expired, _ = create_app_password(alice, "Tablet", timezone.now() - timedelta(minutes=1))
    revoked, _ = create_app_password(bob, "Laptop")
    revoked.revoke()
    changelist = url("apppassword_changelist")
    response = admin_client.get(changelist)
    assert response.status_code == 200
    assert live.hint in response.content.decode()
    assert live.password_hash.encode() not in response.content
    for status, expected in (("active", live), ("expired", expired), ("revoked", revoked)):
        assert results(admin_client.get(changelist, {"status": status})) == [expected]
    assert set(results(admin_client.get(changelist, {"q": "bob@"}))) == {revoked}
    assert admin_client.get(url("apppassword_add")).status_code == 403
    assert admin_client.get(changelist, {"password_hash__startswith": "$"}).status_code == 400
    messages = post_action(admin_client, changelist, "revoke", [live, revoked])
    assert messages == ["1 app password was revoked."]  # revoked already: kept as it was
    assert not AppPassword.objects.live().exists()
    assert LogEntry.objects.get().object_id == str(live.pk)
    detail = admin_client.get(url("apppassword_change", live.pk))
    assert detail.status_code == 200
    assert live.password_hash.encode() not in detail.content


@pytest.mark.parametrize(
    ("encoded", "summary"),
    [
        (
            "{SHA512-CRYPT}$6$keI1HCtfSGm.SQOi$XeQMd1bPbplr6qsynzsnKOYXAVnTetLKevI8qDcgJkJrHCraBK"
            ".xWt9L3BZA1CUVjxjDDLaoaoUAiQi4wNex71",
            "SHA512-CRYPT rounds=5000 (imported; replaced by argon2id at the next good login)",
        ),
        (
            "{SHA256-CRYPT}$5$rounds=10000$GrQ7LECSSBLXbfud$lekzyUo.KcW6l/R/IWbsxB0TK2lgcHCaq"
            ".vkYkkJK11",
            "SHA256-CRYPT rounds=10000 (imported; replaced by argon2id at the next good login)",
        ),
        (
            "{BLF-CRYPT}$2y$05$zfjL8GGr7iAEmsjilJavmu8APbH5gtslJpgSFU6auX01ke7dXLBr.",
            "BLF-CRYPT cost=05 (imported; replaced by argon2id at the next good login)",
        ),
        (
            "$argon2i$v=19$m=32768,t=4,p=1$zqT6mmijPnqfO39WeW6+gQ$zsn5DogNvpZ3MxBGemxl684/F6UUskFTm2fsG3SsXQ4",
            "argon2i m=32768 t=4 p=1 salt: zqT6",
        ),
    ],
)
def test_hash_summary_of_imported_hashes(encoded, summary):
    shown = hash_summary(encoded)
    assert shown.startswith(summary)
    digest = encoded.rsplit("$", 1)[1]
    assert digest[8:] not in shown


# --- audit log export ---------------------------------------------------------------------


def test_audit_export_is_a_csv_of_a_date_range(admin_client):
    day = timezone.make_aware(datetime(2025, 3, 10, 12, 0))
    make_record(conn_id="before", started_at=day - timedelta(days=2))
    make_record(
        conn_id="first",
        started_at=day - timedelta(days=1, hours=11, minutes=59),  # 00:01 on the 9th
        ehlo_name='=HYPERLINK("http://evil.example")',
        authc="-alice@example.com",
        meta={
            "auth_attempts": [{"outcome": "success"}],
            "auth_credentials": [
                {
                    "kind": "app_password",
                    "app_password_id": 7,
                    "label": "Phone",
                    "result": "accepted",
                    "attempt": 0,
                }
            ],
        },
    )
    make_record(conn_id="last", started_at=day + timedelta(hours=11, minutes=59))  # 23:59
    make_record(conn_id="after", started_at=day + timedelta(hours=12, minutes=1))
    changelist = admin_client.get(url("connectionrecord_changelist"))
    assert url("connectionrecord_export").encode() in changelist.content
    form = admin_client.get(url("connectionrecord_export"))
    assert form.status_code == 200
    assert b'type="date"' in form.content
    response = admin_client.get(
        url("connectionrecord_export"), {"start": "2025-03-09", "end": "2025-03-10"}
    )
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "kumosubmit-audit-2025-03-09-to-2025-03-10.csv" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["conn_id"] for row in rows] == ["first", "last"]
    first = rows[0]
    assert first["ehlo_name"] == '\'=HYPERLINK("http://evil.example")'
    assert first["authc"] == "'-alice@example.com"
    assert first["auth_credential"] == "app password 7 (Phone): accepted"
    assert first["peer_address"] == "192.0.2.10"
    assert first["started_at"] == "2025-03-09T00:01:00+00:00"
    assert json.loads(first["meta"])["auth_credentials"][0]["label"] == "Phone"
    only = admin_client.get(
        url("connectionrecord_export"),
        {"start": "2025-03-01", "end": "2025-03-31", "authc": "-alice@example.com"},
    )
    assert b"first" in b"".join(only.streaming_content)


def test_audit_export_and_its_button_come_with_the_app(admin_client, settings):
    """Without the project's templates/ folder (as in a project that installed the wheel)."""
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": []}]
    make_record(conn_id="only", started_at=timezone.now())
    changelist = admin_client.get(url("connectionrecord_changelist"))
    assert changelist.status_code == 200
    button = f'<a href="{url("connectionrecord_export")}" class="viewlink">Export as CSV</a>'
    assert button.encode() in changelist.content
    assert admin_client.get(url("connectionrecord_export")).status_code == 200
    today = timezone.localdate().isoformat()
    response = admin_client.get(url("connectionrecord_export"), {"start": today, "end": today})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["conn_id"] for row in rows] == ["only"]


def test_audit_export_checks_its_range_and_permission(admin_client, client, db):
    response = admin_client.get(
        url("connectionrecord_export"), {"start": "2025-03-10", "end": "2025-03-09"}
    )
    assert response.status_code == 200
    assert not getattr(response, "streaming", False)
    assert "end" in response.context["form"].errors
    operator = User.objects.create_user("operator", is_staff=True)
    client.force_login(operator)
    assert client.get(url("connectionrecord_export")).status_code == 403
    operator.user_permissions.add(Permission.objects.get(codename="view_connectionrecord"))
    assert client.get(url("connectionrecord_export")).status_code == 200
