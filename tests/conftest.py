"""Fixtures: a test CA, a live listener on loopback, logins, and a password-leak watch."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.apps import apps
from django.core import serializers

from kumosubmit import hooks
from kumosubmit.credentials.models import AuthorizedIdentity, SmtpLogin
from tests.live import LiveSMTPServer
from tests.redisutil import REDIS_SERVER, RedisServer
from tests.tlsutil import TestPKI, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def _default_hooks() -> Iterator[None]:
    """Each test starts and ends with the built-in hook handlers."""
    hooks.reset()
    yield
    hooks.reset()


class SecretWatch:
    """Passwords and tokens a test used, to prove none of them is written anywhere."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add(self, *secrets: str) -> None:
        for secret in secrets:
            if len(secret) >= 4:  # shorter strings occur by chance
                self.secrets.add(secret)
                self.secrets.add(base64.b64encode(secret.encode()).decode().rstrip("="))

    def add_plain(self, authz: str, authc: str, password: str) -> None:
        self.add(password)
        blob = base64.b64encode(f"{authz}\0{authc}\0{password}".encode()).decode()
        self.secrets.add(blob.rstrip("="))

    def add_bearer(self, authz: str, token: str) -> None:
        """A token (OAUTHBEARER, XOAUTH2), and the SASL messages that carry it."""
        self.add(token)
        for message in (
            f"n,a={authz},\x01auth=Bearer {token}\x01\x01",
            f"n,,\x01auth=Bearer {token}\x01\x01",
            f"user={authz}\x01auth=Bearer {token}\x01\x01",
        ):
            self.secrets.add(base64.b64encode(message.encode()).decode().rstrip("="))

    def assert_absent_from(self, text: str, where: str) -> None:
        found = sorted(s for s in self.secrets if s in text)
        assert not found, f"secret(s) {found} found in {where}"


@pytest.fixture
def secret_watch(transactional_db: None, caplog: pytest.LogCaptureFixture) -> Iterator[SecretWatch]:
    """Fails the test if a watched password or token shows up in a log record or a database
    row (django-oauth-toolkit's tables included: they keep only checksums of tokens)."""
    caplog.set_level(logging.DEBUG)
    watch = SecretWatch()
    yield watch
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for when in ("setup", "call", "teardown"):  # caplog.text would hold only this phase
        for record in caplog.get_records(when):
            watch.assert_absent_from(formatter.format(record), f"a log record ({when})")
            watch.assert_absent_from(repr(record.args), "log record arguments")
    for model in apps.get_models():
        dump = serializers.serialize("json", model._default_manager.all())
        watch.assert_absent_from(dump, f"the {model._meta.db_table} table")


@pytest.fixture
def make_login(secret_watch: SecretWatch) -> Callable[..., SmtpLogin]:
    """Create a login (its password is watched for leaks)."""

    def make(
        username: str = "alice@example.com",
        password: str = "correct horse battery",
        *,
        is_active: bool = True,
        may_act_as: tuple[str, ...] = (),
    ) -> SmtpLogin:
        secret_watch.add(password)
        login = SmtpLogin(username=username, is_active=is_active)
        login.set_password(password)
        login.save()
        for identity in may_act_as:
            AuthorizedIdentity.objects.create(login=login, identity=identity)
        return login

    return make


@pytest.fixture
def smtp_server(
    transactional_db: None, pki: TestPKI, secret_watch: SecretWatch
) -> Iterator[LiveSMTPServer]:
    """A running listener (STARTTLS and implicit TLS) on free loopback ports."""
    server = LiveSMTPServer(pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def data_dir(settings, tmp_path: Path) -> Path:
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "DATA_DIR": tmp_path}
    return tmp_path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Our own redis-server (the OS package's binary) for the whole run; skipped without it."""
    if REDIS_SERVER is None:
        if os.environ.get("KUMOSUBMIT_REQUIRE_REDIS"):  # set by .ci/run
            pytest.fail("redis-server is not installed (make system-packages)")
        pytest.skip("redis-server is not installed (make system-packages)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
