"""The auth cache (AUTH_CACHE_TTL): off by default, a keyed hash, void when the credential changes.

What a connection's AUTH did is read from its audit row: the built-in handler
notes ``"cached": True`` when argon2 was skipped.
"""

from __future__ import annotations

import smtplib
import textwrap
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.authcache import AuthCache
from kumosubmit.credentials.models import AppPassword, SmtpLogin, create_app_password
from tests.live import free_port, plain_blob, quitting
from tests.process import ManageProcess, command_env
from tests.settings import TEST_ARGON2

ALICE = "alice@example.com"
PASSWORD = "alice's cached password 1"
NEW_PASSWORD = "alice's next password 2"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cache_on(settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "AUTH_CACHE_TTL": 60, "AUTH_CACHE_SIZE": 3}


def test_off_by_default_nothing_is_remembered():
    cache = AuthCache()
    cache.remember("login:1", "$argon2id$hash", PASSWORD)
    assert not cache.verified("login:1", "$argon2id$hash", PASSWORD)
    assert len(cache) == 0


def test_a_pair_is_remembered_for_the_ttl_only(cache_on):
    clock = Clock()
    cache = AuthCache(clock)
    cache.remember("login:1", "hash-a", PASSWORD)
    assert cache.verified("login:1", "hash-a", PASSWORD)
    # Another password, hash or credential is another entry.
    assert not cache.verified("login:1", "hash-a", PASSWORD + "x")
    assert not cache.verified("login:1", "hash-b", PASSWORD)
    assert not cache.verified("login:2", "hash-a", PASSWORD)
    clock.now += 59.9
    assert cache.verified("login:1", "hash-a", PASSWORD)
    clock.now += 0.1
    assert not cache.verified("login:1", "hash-a", PASSWORD)
    assert len(cache) == 0  # the expired entry is gone


def test_the_cache_keeps_at_most_its_size_dropping_the_oldest(cache_on):
    cache = AuthCache(Clock())
    for n in range(4):
        cache.remember(f"login:{n}", "hash", PASSWORD)
    assert len(cache) == 3
    assert not cache.verified("login:0", "hash", PASSWORD)
    assert all(cache.verified(f"login:{n}", "hash", PASSWORD) for n in (1, 2, 3))


def test_only_a_keyed_digest_is_kept(cache_on):
    cache, other = AuthCache(), AuthCache()
    cache.remember("login:1", "hash", PASSWORD)
    (digest,) = cache._entries
    assert PASSWORD.encode() not in digest and len(digest) == 32
    # Each process has its own random key: a digest means nothing elsewhere.
    other.remember("login:1", "hash", PASSWORD)
    assert set(other._entries) != {digest}


# -- through a live listener ------------------------------------------------------------


def auth(server, secret_watch, user: str, password: str) -> int:
    secret_watch.add_plain("", user, password)
    with quitting(server.starttls()) as client:
        return client.docmd("AUTH", "PLAIN " + plain_blob("", user, password))[0]


def cached_flags(server) -> list[bool]:
    """For each connection so far, oldest first: was its last AUTH answered from the cache?"""
    server.settle()
    return [answered_from_cache(row) for row in ConnectionRecord.objects.order_by("started_at")]


def test_with_the_cache_off_every_auth_verifies(smtp_server, secret_watch, make_login):
    make_login(ALICE, PASSWORD)
    assert [auth(smtp_server, secret_watch, ALICE, PASSWORD) for _ in range(3)] == [235] * 3
    assert cached_flags(smtp_server) == [False] * 3


def test_a_verified_password_skips_argon2_until_its_hash_changes(
    smtp_server, secret_watch, make_login, cache_on
):
    login = make_login(ALICE, PASSWORD)
    codes = [auth(smtp_server, secret_watch, ALICE, PASSWORD) for _ in range(3)]
    assert codes == [235, 235, 235]
    assert cached_flags(smtp_server) == [False, True, True]
    # A wrong password is never answered from the cache.
    assert auth(smtp_server, secret_watch, ALICE, "wrong password") == 535
    # The same password set again: a new salt, so a new hash, so a full verification.
    login.set_password(PASSWORD)
    login.save()
    assert auth(smtp_server, secret_watch, ALICE, PASSWORD) == 235
    assert cached_flags(smtp_server)[-1] is False
    # A changed password: the old one is refused at once.
    secret_watch.add(NEW_PASSWORD)
    login.set_password(NEW_PASSWORD)
    login.save()
    assert auth(smtp_server, secret_watch, ALICE, PASSWORD) == 535


def test_deactivating_a_login_refuses_its_cached_password_at_once(
    smtp_server, secret_watch, make_login, cache_on
):
    login = make_login(ALICE, PASSWORD)
    assert [auth(smtp_server, secret_watch, ALICE, PASSWORD) for _ in range(2)] == [235, 235]
    SmtpLogin.objects.filter(pk=login.pk).update(is_active=False)
    assert auth(smtp_server, secret_watch, ALICE, PASSWORD) == 535


@pytest.mark.parametrize("change", ["revoked", "expired"])
def test_a_revoked_or_expired_app_password_is_refused_at_once(
    smtp_server, secret_watch, make_login, cache_on, change
):
    login = make_login(ALICE, PASSWORD)
    row, text = create_app_password(login, "Phone")
    secret_watch.add(text)
    assert [auth(smtp_server, secret_watch, ALICE, text) for _ in range(2)] == [235, 235]
    assert cached_flags(smtp_server) == [False, True]
    if change == "revoked":
        row.revoke()
    else:
        AppPassword.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(1))
    assert auth(smtp_server, secret_watch, ALICE, text) == 535


# -- every process ---------------------------------------------------------------------


@pytest.fixture
def two_workers(tmp_path, pki, transactional_db, make_login, monkeypatch):
    """runsmtpd --workers 2 with the cache on, from a settings module of its own."""
    (tmp_path / "cache_settings.py").write_text(
        textwrap.dedent(f"""
        from project.settings import *  # noqa: F403
        KUMOSUBMIT = {{
            **KUMOSUBMIT,
            "ARGON2": {TEST_ARGON2!r},
            "AUTH_CACHE_TTL": 300,
            "BRUTE_FORCE": {{"ENABLED": False}},
        }}
        """)
    )
    env = command_env(tmp_path)
    env["DJANGO_SETTINGS_MODULE"] = "cache_settings"
    env["PYTHONPATH"] = f"{tmp_path}:{env.get('PYTHONPATH', '')}".rstrip(":")
    port = free_port()
    process = ManageProcess(
        "runsmtpd", "--listen", f"127.0.0.1:{port}", *pki.cert_args(), "--workers", "2", env=env
    )
    process.port = port
    try:
        process.wait_for("worker 1 started")  # the socket is bound before the workers start
        yield process
    finally:
        process.kill()


def remote_auth(port: int, pki, password: str) -> int:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    with quitting(client):
        client.starttls(context=pki.client_context())
        client.ehlo()
        return client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, password))[0]


def wait_records(count: int, timeout: float = 10) -> list[ConnectionRecord]:
    """The audit rows, oldest first, once there are ``count`` (written by another process)."""
    deadline = time.monotonic() + timeout
    while (
        (rows := list(ConnectionRecord.objects.order_by("started_at")))
        and len(rows) < count
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    return rows


def answered_from_cache(row: ConnectionRecord) -> bool:
    return bool(row.meta["auth_credentials"][-1].get("cached"))


def test_a_password_change_voids_the_cache_of_every_worker(two_workers, pki, make_login):
    login = make_login(ALICE, PASSWORD)
    # Until both workers have answered from their caches (the kernel picks the worker).
    cached_by: set[int] = set()
    for n in range(1, 61):
        assert remote_auth(two_workers.port, pki, PASSWORD) == 235
        cached_by = {row.meta["pid"] for row in wait_records(n) if answered_from_cache(row)}
        if len(cached_by) == 2:
            break
    assert len(cached_by) == 2, "both workers should have answered from their caches"
    before = ConnectionRecord.objects.count()
    login.set_password(NEW_PASSWORD)
    login.save()
    assert [remote_auth(two_workers.port, pki, PASSWORD) for _ in range(12)] == [535] * 12
    assert remote_auth(two_workers.port, pki, NEW_PASSWORD) == 235
    after = wait_records(before + 13)[before:]
    assert len(after) == 13
    assert {row.meta["pid"] for row in after[:12]} == cached_by  # both workers refused it
    assert not answered_from_cache(after[12])
