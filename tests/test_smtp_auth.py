"""AUTH over real TLS sessions against a running listener (RFC 4954, RFC 4616)."""

from __future__ import annotations

import logging
import smtplib
import socket
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.models import SmtpLogin
from kumosubmit.credentials.service import LAST_USED_PRECISION
from tests.live import LiveSMTPServer, b64, plain_blob, quitting

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"


def auth_plain(
    client: smtplib.SMTP, authz: str, authc: str, password: str, watch
) -> tuple[int, bytes]:
    watch.add_plain(authz, authc, password)
    return client.docmd("AUTH", "PLAIN " + plain_blob(authz, authc, password))


def test_ehlo_before_tls_offers_starttls_not_auth(smtp_server):
    with quitting(smtp_server.plain()) as client:
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert client.has_extn("size")
        assert client.esmtp_features["size"] == "35000000"


def test_ehlo_after_starttls_offers_auth_plain_login_and_tokens(smtp_server):
    with quitting(smtp_server.starttls()) as client:
        assert client.esmtp_features["auth"].split() == ["LOGIN", "OAUTHBEARER", "PLAIN", "XOAUTH2"]
        assert not client.has_extn("starttls")
        assert client.has_extn("enhancedstatuscodes")


def test_auth_before_tls_is_refused_with_538(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.plain()) as client:
        code, text = auth_plain(client, "", ALICE, PASSWORD, secret_watch)
    assert (code, text) == (
        538,
        b"5.7.11 Encryption required for requested authentication mechanism",
    )


def test_mail_before_auth_is_refused_with_530(smtp_server):
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("MAIL FROM:<a@example.com>") == (530, b"5.7.0 Authentication required")
    with quitting(smtp_server.plain()) as client:
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 530


def test_right_password_gets_235(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert auth_plain(client, "", ALICE, PASSWORD, secret_watch) == (
            235,
            b"2.7.0 Authentication successful",
        )


@pytest.mark.parametrize(
    ("username", "password", "active"),
    [
        pytest.param(ALICE, "wrong password", True, id="wrong"),
        pytest.param("nobody@example.com", PASSWORD, True, id="unknown"),
        pytest.param(ALICE, PASSWORD, False, id="inactive"),
        pytest.param(ALICE, "", True, id="empty-password"),
    ],
)
def test_refusals_get_535(smtp_server, make_login, secret_watch, username, password, active):
    make_login(ALICE, PASSWORD, is_active=active)
    with quitting(smtp_server.starttls()) as client:
        assert auth_plain(client, "", username, password, secret_watch) == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
        # The session goes on: a failed AUTH does not authenticate it.
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 530


def test_usernames_are_case_insensitive(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert auth_plain(client, "", "Alice@Example.COM", PASSWORD, secret_watch)[0] == 235


def test_authz_equal_to_authc_is_accepted(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert auth_plain(client, ALICE, ALICE, PASSWORD, secret_watch)[0] == 235


def test_authz_of_another_login_is_refused(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    make_login("bob@example.com", "bobs own password")
    with quitting(smtp_server.starttls()) as client:
        assert auth_plain(client, "bob@example.com", ALICE, PASSWORD, secret_watch)[0] == 535


def test_authz_the_login_may_act_as_is_accepted(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD, may_act_as=("sales@example.com",))
    with quitting(smtp_server.starttls()) as client:
        assert auth_plain(client, "sales@example.com", ALICE, PASSWORD, secret_watch)[0] == 235
        client.sendmail("sales@example.com", ["x@example.org"], b"Subject: t\r\n\r\nbody\r\n")
    smtp_server.settle()
    from kumosubmit.spool.models import Message

    message = Message.objects.get()
    assert (message.meta["authz_id"], message.meta["authn_id"]) == ("sales@example.com", ALICE)


def test_second_auth_after_success_gets_503(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert auth_plain(client, "", ALICE, PASSWORD, secret_watch)[0] == 235
        assert auth_plain(client, "", ALICE, PASSWORD, secret_watch) == (
            503,
            b"5.5.1 Already authenticated",
        )


@pytest.mark.parametrize(
    "argument",
    [
        pytest.param("PLAIN !!!notbase64", id="bad-base64"),
        pytest.param("PLAIN " + b64("only-one-field"), id="one-field"),
        pytest.param("PLAIN " + b64("a\0b\0c\0d"), id="four-fields"),
        pytest.param("PLAIN " + b64("\0\0password"), id="empty-authc"),
        pytest.param("PLAIN " + "AGFsaWNlAP8=", id="not-utf8"),
    ],
)
def test_malformed_plain_gets_501(smtp_server, argument):
    with quitting(smtp_server.starttls()) as client:
        code, text = client.docmd("AUTH", argument)
        assert code == 501
        assert text.startswith(b"5.5.2")


def test_plain_with_challenge(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    secret_watch.add_plain("", ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN") == (334, b"")
        assert client.docmd(plain_blob("", ALICE, PASSWORD))[0] == 235


def test_star_cancels_auth_with_501(smtp_server):
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN")[0] == 334
        code, _ = client.docmd("*")
        assert code == 501
        # Still usable, still unauthenticated.
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 530


def test_unknown_mechanism_gets_504(smtp_server):
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "CRAM-MD5")[0] == 504


def test_auth_login(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "LOGIN") == (334, b64("Username:").encode())
        assert client.docmd(b64(ALICE)) == (334, b64("Password:").encode())
        assert client.docmd(b64(PASSWORD))[0] == 235


def test_auth_login_wrong_password(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    secret_watch.add("not the password")
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "LOGIN " + b64(ALICE))[0] == 334
        assert client.docmd(b64("not the password"))[0] == 535


def test_smtplib_login_uses_the_hook(smtp_server, make_login):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert client.login(ALICE, PASSWORD)[0] == 235


def test_implicit_tls_offers_and_accepts_auth(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.implicit()) as client:
        assert not client.has_extn("starttls")
        assert "PLAIN" in client.esmtp_features["auth"]
        assert auth_plain(client, "", ALICE, PASSWORD, secret_watch)[0] == 235
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")


def test_good_login_records_last_use(smtp_server, make_login, secret_watch):
    login = make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        auth_plain(client, "", ALICE, PASSWORD, secret_watch)
    login.refresh_from_db()
    assert login.last_used_at is not None
    assert login.last_used_from == "127.0.0.1"


def test_last_use_is_rewritten_once_a_minute_per_address(smtp_server, make_login, secret_watch):
    # A client that opens a session per message must not cost a write per AUTH
    # (LAST_USED_PRECISION); a use from a new address is written at once.
    login = make_login(ALICE, PASSWORD)

    def use_after(at: datetime, where: str) -> SmtpLogin:
        SmtpLogin.objects.filter(pk=login.pk).update(last_used_at=at, last_used_from=where)
        with quitting(smtp_server.starttls()) as client:
            assert auth_plain(client, "", ALICE, PASSWORD, secret_watch)[0] == 235
        return SmtpLogin.objects.get(pk=login.pk)

    lately = timezone.now() - LAST_USED_PRECISION / 2
    assert use_after(lately, "127.0.0.1").last_used_at == lately
    after = use_after(lately, "2001:db8::7")
    assert after.last_used_from == "127.0.0.1" and after.last_used_at > lately
    long_ago = timezone.now() - LAST_USED_PRECISION - timedelta(seconds=1)
    assert use_after(long_ago, "127.0.0.1").last_used_at > lately


def test_old_hash_is_upgraded_on_good_login(smtp_server, make_login, secret_watch, settings):
    login = make_login(ALICE, PASSWORD)
    old_hash = login.password_hash
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "ARGON2": {"time_cost": 2, "memory_cost": 64, "parallelism": 1},
    }
    with quitting(smtp_server.starttls()) as client:
        assert auth_plain(client, "", ALICE, PASSWORD, secret_watch)[0] == 235
    login.refresh_from_db()
    assert login.password_hash != old_hash
    assert ",t=2," in login.password_hash
    # And the upgraded hash still verifies.
    with quitting(smtp_server.starttls()) as client:
        assert auth_plain(client, "", ALICE, PASSWORD, secret_watch)[0] == 235


def test_wrong_password_leaves_hash_alone(smtp_server, make_login, secret_watch):
    login = make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        auth_plain(client, "", ALICE, "wrong guess", secret_watch)
    assert SmtpLogin.objects.get(pk=login.pk).password_hash == login.password_hash
    assert SmtpLogin.objects.get(pk=login.pk).last_used_at is None


def test_audit_row_records_the_connection(smtp_server, make_login, secret_watch):
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        auth_plain(client, "", ALICE, "wrong guess", secret_watch)
        auth_plain(client, "", ALICE, PASSWORD, secret_watch)
        client.sendmail(ALICE, ["bob@example.org"], b"Subject: t\r\n\r\nhello\r\n")
    smtp_server.settle()
    record = ConnectionRecord.objects.get()
    assert record.peer_address == "127.0.0.1"
    assert record.local_port == smtp_server.starttls_port
    assert record.listener == "starttls"
    assert record.tls_version.startswith("TLSv1.")
    assert record.tls_cipher
    assert record.ehlo_name == "client.test"
    assert (record.authc, record.authz, record.auth_outcome) == (ALICE, ALICE, "success")
    assert record.auth_mechanism == "PLAIN"
    assert record.auth_attempts == 2
    assert record.messages_accepted == 1
    assert record.bytes_accepted > len(b"Subject: t\r\n\r\nhello\r\n")
    assert record.ended_at >= record.started_at
    meta = record.meta
    assert [a["outcome"] for a in meta["auth_attempts"]] == ["failure", "success"]
    assert meta["authz_id"] == ALICE and meta["authn_id"] == ALICE
    assert meta["conn_id"] == record.conn_id


def test_every_connection_leaves_an_audit_row(smtp_server):
    with quitting(smtp_server.plain()):
        pass
    with quitting(smtp_server.implicit()):
        pass
    smtp_server.settle()
    assert sorted(ConnectionRecord.objects.values_list("listener", "auth_outcome")) == [
        ("implicit-tls", "none"),
        ("starttls", "none"),
    ]


def test_failed_starttls_handshake_is_logged_and_audited(smtp_server, caplog):
    with socket.create_connection(("127.0.0.1", smtp_server.starttls_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO client.test\r\nSTARTTLS\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"this is not a TLS ClientHello\r\n" * 4)
        assert reader.read() == b""  # the server hangs up
    smtp_server.settle()
    record = ConnectionRecord.objects.get()
    assert record.tls_version == ""
    assert record.meta["tls_error"]
    assert "TLS handshake failed" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_ipv6_loopback_listener(pki, make_login, transactional_db, secret_watch):
    make_login(ALICE, PASSWORD)
    server = LiveSMTPServer(pki, host="::1")
    server.start()
    try:
        client = smtplib.SMTP("::1", server.starttls_port, local_hostname="client.test", timeout=10)
        with quitting(client):
            client.starttls(context=pki.client_context())
            client.ehlo()
            assert client.login(ALICE, PASSWORD)[0] == 235
        server.settle()
    finally:
        server.stop()
    record = ConnectionRecord.objects.get()
    assert (record.peer_address, record.local_address) == ("::1", "::1")
