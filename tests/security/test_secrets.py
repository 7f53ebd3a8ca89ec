"""Secrets (hardening issue, item 6): no password or token, nor its base64, is written anywhere.

An AUTH-heavy run (right, wrong, unknown, inactive, malformed, cancelled,
pipelined, pre-TLS, over-long; PLAIN and LOGIN; each with its own random
password) goes to the in-process listener and to a real ``runsmtpd`` process
logging everything at DEBUG. Then every place the passwords could have reached
is searched: every log record (``secret_watch``), every row of every table
(``secret_watch``), the process's whole log, every admin page of every
kumosubmit model, and the error reports Django makes when the admin fails while
it holds a password.
"""

from __future__ import annotations

import base64
import logging
import secrets
import signal
import smtplib
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.log import AdminEmailHandler

from kumosubmit.conf import DEFAULTS
from kumosubmit.hooks import on, reset
from kumosubmit.spool.models import Message
from tests.live import LiveSMTPServer, b64, free_port, plain_blob, quitting
from tests.process import ROOT, ManageProcess, command_env
from tests.settings import TEST_ARGON2

ALICE = "alice@example.com"
BOB = "bob@example.com"  # inactive
CAROL = "carol@example.com"  # a non-ASCII password
SALES = "sales@example.com"  # an identity alice may act as


def password(kind: str) -> str:
    """Long and random: it cannot turn up anywhere by chance."""
    return f"pw-{kind}-{secrets.token_urlsafe(18)}"


class Storm:
    """Many AUTH attempts of every kind, each with its own password, all watched."""

    def __init__(self, watch: Any) -> None:
        self.watch = watch
        self.passwords = {
            ALICE: password("alice"),
            BOB: password("bob"),
            CAROL: "p\u00e4ssw\u00f6rt-\u2713-" + secrets.token_urlsafe(18),
        }
        for secret in self.passwords.values():
            watch.add(secret)
        self.codes: list[tuple[str, int]] = []

    def fresh(self, kind: str) -> str:
        secret = password(kind)
        self.watch.add(secret)
        return secret

    def plain(self, client: smtplib.SMTP, authz: str, authc: str, secret: str) -> int:
        self.watch.add_plain(authz, authc, secret)
        return client.docmd("AUTH", "PLAIN " + plain_blob(authz, authc, secret))[0]

    def run(self, connect: Callable[[], smtplib.SMTP], plaintext: Callable[[], smtplib.SMTP]):
        pw = self.passwords

        def attempt(
            name: str, expected: int, action: Callable[[smtplib.SMTP], int], sender: str = ALICE
        ) -> None:
            with quitting(connect()) as client:
                code = action(client)
                assert code == expected, (name, code)
                if code == 235:
                    client.sendmail(sender, ["x@example.org"], b"Subject: t\r\n\r\nhello\r\n")
            self.codes.append((name, code))

        def login(user: str, secret: str, *, initial: bool = False) -> Callable[..., int]:
            def run(client: smtplib.SMTP) -> int:
                self.watch.add(secret)
                if initial:
                    assert client.docmd("AUTH", "LOGIN " + b64(user))[0] == 334
                else:
                    assert client.docmd("AUTH", "LOGIN")[0] == 334
                    assert client.docmd(b64(user))[0] == 334
                return client.docmd(b64(secret))[0]

            return run

        def challenged(client: smtplib.SMTP) -> int:
            secret = self.fresh("challenged")
            self.watch.add_plain("", ALICE, secret)
            assert client.docmd("AUTH", "PLAIN")[0] == 334
            return client.docmd(plain_blob("", ALICE, secret))[0]

        def raw_login_password(client: smtplib.SMTP) -> int:
            # A broken client sends the password itself, not its base64.
            secret = self.fresh("raw") + "!*$"
            assert client.docmd("AUTH", "LOGIN " + b64(ALICE))[0] == 334
            return client.docmd(secret)[0]

        def four_fields(client: smtplib.SMTP) -> int:
            secret = self.fresh("fields")
            blob = base64.b64encode(f"\0{ALICE}\0{secret}\0extra".encode()).decode()
            self.watch.secrets.add(blob.rstrip("="))
            return client.docmd("AUTH", "PLAIN " + blob)[0]

        def not_base64(client: smtplib.SMTP) -> int:
            secret = self.fresh("nonb64")
            self.watch.add_plain("", ALICE, secret)
            return client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, secret) + "!")[0]

        def cancelled(client: smtplib.SMTP) -> int:
            assert client.docmd("AUTH", "LOGIN " + b64(ALICE))[0] == 334
            return client.docmd("*")[0]

        def too_long(client: smtplib.SMTP) -> int:
            secret = self.fresh("long")
            self.watch.add_plain("", ALICE, secret)
            # Longer than the 12288 octets RFC 4954 allows an AUTH line.
            line = "AUTH PLAIN " + plain_blob("", ALICE, secret) * 300
            assert len(line) > 12288
            return client.docmd(line)[0]

        def pipelined(client: smtplib.SMTP) -> int:
            secret = self.fresh("pipelined")
            self.watch.add_plain("", ALICE, secret)
            client.send(f"AUTH PLAIN {plain_blob('', ALICE, secret)}\r\nNOOP\r\n".encode())
            code = client.getreply()[0]
            assert client.getreply()[0] == 250
            return code

        attempt("plain-right", 235, lambda c: self.plain(c, "", ALICE, pw[ALICE]))
        attempt("plain-authz", 235, lambda c: self.plain(c, SALES, ALICE, pw[ALICE]))
        attempt("plain-unicode", 235, lambda c: self.plain(c, "", CAROL, pw[CAROL]), CAROL)
        for n in range(3):
            attempt("plain-wrong", 535, lambda c: self.plain(c, "", ALICE, self.fresh("wrong")))
            attempt(
                "plain-unknown",
                535,
                lambda c, n=n: self.plain(c, "", f"ghost{n}@example.com", self.fresh("unknown")),
            )
        attempt("plain-wrong-unicode", 535, lambda c: self.plain(c, "", CAROL, "\u00e9" + pw[BOB]))
        attempt("plain-inactive", 535, lambda c: self.plain(c, "", BOB, pw[BOB]))
        attempt("plain-foreign-authz", 535, lambda c: self.plain(c, BOB, ALICE, pw[ALICE]))
        attempt("plain-challenged", 535, challenged)
        attempt("login-right", 235, login(ALICE, pw[ALICE]))
        attempt("login-initial", 235, login(ALICE, pw[ALICE], initial=True))
        attempt("login-wrong", 535, login(ALICE, self.fresh("login-wrong")))
        attempt("login-unknown", 535, login("ghost@example.com", self.fresh("login-unknown")))
        attempt("login-inactive", 535, login(BOB, pw[BOB], initial=True))
        attempt("login-raw-password", 501, raw_login_password)
        attempt("plain-four-fields", 501, four_fields)
        attempt("plain-not-base64", 501, not_base64)
        attempt("login-cancelled", 501, cancelled)
        attempt("plain-pipelined", 535, pipelined)
        with quitting(connect()) as client:
            self.codes.append(("plain-too-long", too_long(client)))
            assert self.codes[-1][1] == 500
        with quitting(plaintext()) as client:  # never offered, but a client may try
            self.codes.append(("plain-before-tls", self.plain(client, "", ALICE, pw[ALICE])))
            assert self.codes[-1][1] == 538


def make_logins(make_login: Callable[..., Any], storm: Storm) -> None:
    make_login(ALICE, storm.passwords[ALICE], may_act_as=(SALES,))
    make_login(BOB, storm.passwords[BOB], is_active=False)
    make_login(CAROL, storm.passwords[CAROL])


# -- the in-process listener, and the admin afterwards ---------------------------------------


def admin_urls() -> list[str]:
    """Every admin page of every kumosubmit model and object: lists, details, history."""
    urls = [reverse("admin:index"), reverse("admin:app_list", args=["kumosubmit"])]
    for model in admin.site._registry:
        opts = model._meta
        if opts.app_label != "kumosubmit":
            continue
        name = f"admin:{opts.app_label}_{opts.model_name}"
        urls.append(reverse(f"{name}_changelist"))
        for pk in model._default_manager.values_list("pk", flat=True):
            urls.append(reverse(f"{name}_change", args=[pk]))
            urls.append(reverse(f"{name}_history", args=[pk]))
            try:
                urls.append(reverse(f"{name}_password_change", args=[pk]))
            except NoReverseMatch:
                pass
    return urls


@pytest.fixture
def superuser_client(transactional_db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", None))
    return client


def test_auth_storm_in_process_leaves_no_password_in_logs_tables_or_admin(
    smtp_server: LiveSMTPServer, make_login, secret_watch, lenient_limits, superuser_client
):
    storm = Storm(secret_watch)
    make_logins(make_login, storm)
    storm.run(smtp_server.starttls, smtp_server.plain)

    # A hook that fails with the password in its exception (and in its cause).
    @on("smtp_server_auth_plain")
    def careless(authz, authc, secret, conn_meta):
        try:
            raise KeyError(secret)
        except KeyError as error:
            raise RuntimeError(f"lookup failed for {authc} with {secret!r}") from error

    with quitting(smtp_server.starttls()) as client:
        assert storm.plain(client, "", ALICE, storm.fresh("hook")) == 454
    reset()
    smtp_server.settle()

    # The admin, as an operator browses it after such a run.
    login = make_login(ALICE.replace("alice", "dora"), password("dora"))
    change = reverse("admin:kumosubmit_smtplogin_password_change", args=[login.pk])
    new = storm.fresh("admin-new")
    mismatched = superuser_client.post(change, {"password1": new, "password2": new + "x"})
    assert mismatched.status_code == 200  # the form again, with an error
    secret_watch.assert_absent_from(mismatched.content.decode(), "the password form")
    assert superuser_client.post(change, {"password1": new, "password2": new}).status_code == 302
    added = storm.fresh("admin-add")
    add = superuser_client.post(
        reverse("admin:kumosubmit_smtplogin_add"),
        {
            "username": "erin@example.com",
            "password1": added,
            "password2": added + "y",
            "is_active": "on",
            "identities-TOTAL_FORMS": "0",
            "identities-INITIAL_FORMS": "0",
        },
    )
    assert add.status_code == 200
    secret_watch.assert_absent_from(add.content.decode(), "the add form")

    urls = admin_urls()
    assert len(urls) > 40  # lists and pages of logins, connections, messages
    for url in urls:
        response = superuser_client.get(url)
        assert response.status_code == 200, url
        secret_watch.assert_absent_from(response.content.decode(), url)
    # The run really produced what was searched (secret_watch checks logs and tables).
    assert Message.objects.count() == 5
    assert Counter(code for _, code in storm.codes) == {235: 5, 535: 14, 501: 4, 500: 1, 538: 1}


# -- tokens (AUTH OAUTHBEARER and XOAUTH2) ------------------------------------------------


def oauthbearer_blob(authz: str, token: str) -> str:
    return b64(f"n,a={authz},\x01auth=Bearer {token}\x01\x01")


def xoauth2_blob(user: str, token: str) -> str:
    return b64(f"user={user}\x01auth=Bearer {token}\x01\x01")


def oauth_admin_urls() -> list[str]:
    """django-oauth-toolkit's admin pages: its tokens and applications."""
    urls = []
    for model in admin.site._registry:
        opts = model._meta
        if opts.app_label != "oauth2_provider":
            continue
        name = f"admin:{opts.app_label}_{opts.model_name}"
        urls.append(reverse(f"{name}_changelist"))
        for pk in model._default_manager.values_list("pk", flat=True):
            urls.append(reverse(f"{name}_change", args=[pk]))
    return urls


def test_token_storm_leaves_no_token_in_logs_tables_or_admin(
    smtp_server: LiveSMTPServer, make_login, secret_watch, lenient_limits, superuser_client
):
    from oauth2_provider.models import AccessToken

    from kumosubmit.oauth.models import SmtpToken
    from kumosubmit.oauth.tokens import create_smtp_token, revoke_smtp_token

    owner = User.objects.create_user("alice", "alice@example.org", "site password of alice")
    login = make_login(ALICE, password("alice"), may_act_as=(SALES,))
    login.owner = owner
    login.save(update_fields=["owner"])
    tokens = {}
    for kind in ("good", "revoked", "expired", "scope", "sales"):
        _row, tokens[kind] = create_smtp_token(login, kind, None)
        secret_watch.add_bearer(ALICE, tokens[kind])
        secret_watch.add_bearer(SALES, tokens[kind])
    tokens["unknown"] = "unknown-" + secrets.token_urlsafe(24)
    secret_watch.add_bearer(ALICE, tokens["unknown"])
    revoke_smtp_token(SmtpToken.objects.get(label="revoked"))
    AccessToken.objects.filter(pk=SmtpToken.objects.get(label="expired").access_token_id).update(
        expires=timezone.now() - timedelta(seconds=1)
    )
    AccessToken.objects.filter(pk=SmtpToken.objects.get(label="scope").access_token_id).update(
        scope="read"
    )
    codes = []

    def attempt(mechanism: str, blob: str, dummy: str | None, *, inline: bool = True) -> None:
        with quitting(smtp_server.starttls()) as client:
            if inline:
                code, _text = client.docmd("AUTH", f"{mechanism} {blob}")
            else:
                assert client.docmd("AUTH", mechanism)[0] == 334
                code, _text = client.docmd(blob)
            if code == 334 and dummy is not None:
                code = client.docmd(dummy)[0]
            codes.append(code)
            if code == 235:
                client.sendmail(ALICE, [BOB], b"Subject: t\r\n\r\nwith a token\r\n")

    for kind, token in tokens.items():
        authz = SALES if kind == "sales" else ALICE
        attempt("OAUTHBEARER", oauthbearer_blob(authz, token), "AQ==")
        attempt("XOAUTH2", xoauth2_blob(authz, token), "", inline=False)
    # The error challenge cancelled, a malformed message, a token with a bad character.
    attempt("OAUTHBEARER", oauthbearer_blob(ALICE, tokens["unknown"]), "*")
    bad = tokens["good"] + "!"
    secret_watch.add_bearer(ALICE, bad)
    attempt("XOAUTH2", xoauth2_blob(ALICE, bad), "")
    attempt("OAUTHBEARER", b64(f"n,,\x01auth=Bearer {tokens['good']}\x01"), "AQ==")

    # A hook that fails with the token in its exception (and in its cause).
    @on("smtp_server_auth_oauthbearer")
    def careless(authz, token, conn_meta):
        try:
            raise KeyError(token)
        except KeyError as error:
            raise RuntimeError(f"lookup failed for {authz} with {token!r}") from error

    attempt("XOAUTH2", xoauth2_blob(ALICE, tokens["good"]), "")
    reset()
    smtp_server.settle()

    urls = admin_urls() + oauth_admin_urls()
    assert any("accesstoken" in url for url in urls)
    for url in urls:
        response = superuser_client.get(url)
        assert response.status_code == 200, url
        secret_watch.assert_absent_from(response.content.decode(), url)
    superuser_client.force_login(owner)
    page = superuser_client.get(reverse("credentials:login", args=[login.pk]))
    secret_watch.assert_absent_from(page.content.decode(), "the owner's login page")
    assert Counter(codes) == {235: 4, 535: 8, 501: 3, 454: 1}
    assert Message.objects.count() == 4


# -- error reports: the admin fails while it holds a password -------------------------------


@pytest.fixture
def failing_hash(settings, superuser_client):
    """Make argon2 fail inside the admin's password handling (an unusable ARGON2)."""
    settings.DEBUG = False
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "ARGON2": {**TEST_ARGON2, "memory_cost": 1}}
    superuser_client.raise_request_exception = False
    return superuser_client


def post_failing_add(client: Client, secret: str):
    response = client.post(
        reverse("admin:kumosubmit_smtplogin_add"),
        {
            "username": "frank@example.com",
            "password1": secret,
            "password2": secret,
            "is_active": "on",
            "identities-TOTAL_FORMS": "0",
            "identities-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 500
    return response


def test_error_page_and_error_mail_hide_the_password(failing_hash, secret_watch):
    secret = password("error-page")
    secret_watch.add(secret)
    response = post_failing_add(failing_hash, secret)
    secret_watch.assert_absent_from(response.content.decode(), "the 500 page")
    # Django's default logging mails the report to ADMINS (text, with the request's POST).
    [report] = mail.outbox
    assert "HashingError" in report.body
    assert "password1 = '********************'" in report.body
    secret_watch.assert_absent_from(report.body, "the error mail")


def test_html_error_report_hides_the_password(failing_hash, secret_watch):
    """What ``AdminEmailHandler(include_html=True)`` (or an error tracker) sends: with locals."""
    secret = password("error-html")
    secret_watch.add(secret)
    handler = AdminEmailHandler(include_html=True)
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        post_failing_add(failing_hash, secret)
    finally:
        logger.removeHandler(handler)
    html = [
        content
        for message in mail.outbox
        for content, mimetype in getattr(message, "alternatives", [])
        if mimetype == "text/html"
    ]
    assert html and "HashingError" in html[0]
    for page in html:
        secret_watch.assert_absent_from(page, "the HTML error report")


# -- a real runsmtpd process, logging everything ---------------------------------------------


def debug_settings(directory: Path, log_file: Path) -> str:
    """A settings module: the project's, with DEBUG and every logger at DEBUG into a file."""
    brute_force = {
        **DEFAULTS["BRUTE_FORCE"],
        "DELAY": 0,
        "MAX_DELAY": 0,
        "IP_BLOCK_AFTER": None,
        "LOGIN_BLOCK_AFTER": None,
    }
    overrides = {
        "ARGON2": TEST_ARGON2,  # the hashes the test made: no upgrade on login
        "MAX_AUTH_ATTEMPTS": 10_000,
        "MAX_ERRORS": 10_000,
        "BRUTE_FORCE": brute_force,
    }
    module = "leakcheck_settings"
    (directory / f"{module}.py").write_text(
        "from project.settings import *  # noqa\n"
        "from project.settings import KUMOSUBMIT\n"
        "DEBUG = True  # Django logs every SQL statement with its parameters\n"
        f"KUMOSUBMIT = {{**KUMOSUBMIT, **{overrides!r}}}\n"
        "LOGGING = {\n"
        "    'version': 1,\n"
        "    'disable_existing_loggers': False,\n"
        "    'handlers': {'file': {'class': 'logging.FileHandler',\n"
        f"                          'filename': {str(log_file)!r},\n"
        "                          'formatter': 'all'}},\n"
        "    'formatters': {'all': {'format': '%(levelname)s %(name)s %(message)s'}},\n"
        "    'root': {'handlers': ['file'], 'level': 'DEBUG'},\n"
        "    'loggers': {'kumosubmit': {'level': 'DEBUG'}, 'mail.log': {'level': 'DEBUG'},\n"
        "                'django': {'level': 'DEBUG'}},\n"
        "}\n"
    )
    return module


def test_auth_storm_against_runsmtpd_leaves_no_password_in_its_logs(
    tmp_path: Path, pki, make_login, secret_watch
):
    storm = Storm(secret_watch)
    make_logins(make_login, storm)
    log_file = tmp_path / "runsmtpd.log"
    env = command_env(tmp_path / "data")
    env["DJANGO_SETTINGS_MODULE"] = debug_settings(tmp_path, log_file)
    env["PYTHONPATH"] = f"{tmp_path}:{ROOT}"
    port = free_port()
    server = ManageProcess("runsmtpd", "--listen", f"127.0.0.1:{port}", *pki.cert_args(), env=env)

    def connect_plain() -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
        client.ehlo()
        return client

    def connect() -> smtplib.SMTP:
        client = connect_plain()
        client.starttls(context=pki.client_context())
        client.ehlo()
        return client

    try:
        server.wait_for("listening on")
        storm.run(connect, connect_plain)
        server.signal(signal.SIGTERM)
        assert server.finish() == 0
    finally:
        server.kill()
    log = log_file.read_text()
    # It really logged everything: each command line (AUTH masked), SQL, the sessions.
    assert "AUTH PLAIN ********" in log
    assert "kumosubmit_smtplogin" in log  # SQL statements
    assert log.count("INFO kumosubmit.smtp conn ") == len(storm.codes)
    secret_watch.assert_absent_from(log, "the runsmtpd log")
    secret_watch.assert_absent_from(server.output, "runsmtpd's stdout/stderr")
    assert Message.objects.count() == 5
