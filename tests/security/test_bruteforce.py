"""Brute force and password spraying, attacked through real sockets (issue 4).

Failures are counted per client address and per login in the database, answered
after a growing delay, and then blocked: a blocked client is refused before any
password is checked. The listener binds 127.0.0.1; Linux routes all of
127.0.0.0/8 to lo, so a client that binds 127.0.0.2 is another address.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.core.checks import run_checks
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.conf import DEFAULTS
from kumosubmit.credentials import hashing, throttle
from kumosubmit.credentials.models import AuthFailureCounter
from kumosubmit.hooks import on
from tests.live import LiveSMTPServer, free_port, plain_blob, quitting
from tests.process import ManageProcess, command_env

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
WRONG = "wrong horse battery"
ATTACKER = "127.0.0.1"
OWNER = "127.0.0.2"
ADDRESS_BLOCKED = (421, b"4.7.0 Too many failed logins from your address, closing connection")
LOGIN_BLOCKED = (454, b"4.7.0 Too many failed logins for this user, try again later")
INVALID = (535, b"5.7.8 Authentication credentials invalid")


@pytest.fixture
def penalties(settings):
    """Set BRUTE_FORCE keys (no delay unless asked) and room for many tries per session."""

    def configure(**values):
        settings.KUMOSUBMIT = {
            **settings.KUMOSUBMIT,
            "MAX_AUTH_ATTEMPTS": 1000,
            "MAX_ERRORS": 1000,
            "BRUTE_FORCE": {"DELAY": 0.0, **values},
        }

    return configure


class Clients:
    """Real TLS clients from a chosen loopback address; every password is leak-watched."""

    def __init__(self, server: LiveSMTPServer, watch) -> None:
        self.server = server
        self.watch = watch

    def connect(self, source: str = ATTACKER, server: LiveSMTPServer | None = None):
        server = server or self.server
        client = smtplib.SMTP(
            server.host,
            server.starttls_port,
            local_hostname="client.test",
            timeout=10,
            source_address=(source, 0),
        )
        client.starttls(context=server.pki.client_context())
        client.ehlo()
        return client

    def auth(self, client: smtplib.SMTP, authc: str, password: str) -> tuple[int, bytes]:
        self.watch.add_plain("", authc, password)
        return client.docmd("AUTH", "PLAIN " + plain_blob("", authc, password))

    def attempt(
        self,
        authc: str,
        password: str,
        source: str = ATTACKER,
        server: LiveSMTPServer | None = None,
    ) -> tuple[int, bytes]:
        """One AUTH PLAIN on a fresh connection."""
        with quitting(self.connect(source, server)) as client:
            return self.auth(client, authc, password)

    def timed_attempt(self, authc: str, password: str, source: str = ATTACKER):
        with quitting(self.connect(source)) as client:
            started = time.monotonic()
            reply = self.auth(client, authc, password)
            return reply, time.monotonic() - started


@pytest.fixture
def clients(smtp_server, secret_watch) -> Clients:
    return Clients(smtp_server, secret_watch)


def counter(kind: str, value: str) -> AuthFailureCounter:
    return AuthFailureCounter.objects.get(kind=kind, value=value)


def assert_closed(client: smtplib.SMTP) -> None:
    """The server hung up: the next read ends (TLS close_notify, or the socket)."""
    try:
        assert client.file.readline() == b""
    except (ConnectionResetError, ssl.SSLError):
        pass


# --- the delay -----------------------------------------------------------------------


def test_failures_are_answered_after_a_growing_delay(clients, make_login, penalties):
    penalties(DELAY=0.05, MAX_DELAY=0.2, IP_BLOCK_AFTER=None, LOGIN_BLOCK_AFTER=None)
    make_login(ALICE, PASSWORD)
    # Each guess on a new connection: reconnecting does not reset the count.
    timings = [clients.timed_attempt(ALICE, WRONG) for _ in range(5)]
    assert [reply for reply, _ in timings] == [INVALID] * 5
    waited = [seconds for _, seconds in timings]
    for seconds, expected in zip(waited, [0.05, 0.1, 0.2, 0.2, 0.2], strict=True):
        assert seconds >= expected - 0.005, waited
    assert waited[4] < 0.6, waited  # capped at MAX_DELAY (doubling on would be 0.8)
    # The delay belongs to the address: another one starts at DELAY.
    reply, seconds = clients.timed_attempt(ALICE, WRONG, source=OWNER)
    assert reply == INVALID
    assert 0.045 <= seconds < 0.2


def test_a_success_clears_the_address_count_but_not_the_login_count(clients, make_login, penalties):
    penalties(IP_BLOCK_AFTER=3, LOGIN_BLOCK_AFTER=10)
    make_login(ALICE, PASSWORD)
    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    assert counter("address", ATTACKER).failures == 2
    assert counter("pair", f"{ATTACKER} {ALICE}").failures == 2
    assert clients.attempt("Alice@Example.com", PASSWORD)[0] == 235
    assert not AuthFailureCounter.objects.filter(kind__in=["address", "pair"]).exists()
    assert counter("login", ALICE).failures == 2
    # A fresh count: two more failures do not reach IP_BLOCK_AFTER=3.
    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    assert clients.attempt(ALICE, PASSWORD)[0] == 235


def test_a_success_forgets_only_failures_counted_before_it_was_checked(clients, penalties):
    """Failures from the address that land while the password is being checked, with none
    before, stay counted: the check before the attempt saw nothing to forget."""
    penalties(IP_BLOCK_AFTER=3, LOGIN_BLOCK_AFTER=10)
    policy = throttle.policy()

    @on("smtp_server_auth_plain")
    def accept_after_another_session_fails(authz, authc, password, conn_meta):
        # Another session from the same address fails meanwhile (in its own thread, with
        # its own database connection, as another listener process would).
        throttle._record_failure(policy, throttle.Keys.of(policy, ATTACKER, "bob"), timezone.now())
        connection.close()
        return True

    assert clients.attempt(ALICE, PASSWORD)[0] == 235
    assert counter("address", ATTACKER).failures == 1
    assert counter("pair", f"{ATTACKER} bob").failures == 1


# --- blocking an address ------------------------------------------------------------------


def test_blocked_address_gets_421_and_is_disconnected(clients, make_login, penalties):
    penalties(IP_BLOCK_AFTER=3, BLOCK_DURATION=600)
    make_login(ALICE, PASSWORD)
    before = timezone.now()
    assert [clients.attempt(ALICE, WRONG) for _ in range(3)] == [INVALID] * 3
    row = counter("address", ATTACKER)
    assert row.failures == 3
    assert before + timedelta(seconds=600) <= row.blocked_until
    assert row.blocked_until <= timezone.now() + timedelta(seconds=600)
    client = clients.connect()
    try:
        # Even the right password: it is never looked at.
        assert clients.auth(client, ALICE, PASSWORD) == ADDRESS_BLOCKED
        assert_closed(client)
    finally:
        client.close()
    # Counts are per address: the owner, elsewhere, is let in.
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235


def test_blocked_address_never_reaches_the_hook(clients, penalties):
    penalties(IP_BLOCK_AFTER=2)
    calls = []

    @on("smtp_server_auth_plain")
    def count_calls(authz, authc, password, conn_meta):
        calls.append(authc)
        return False

    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    assert len(calls) == 2
    replies = [clients.attempt(f"user{i}@example.com", WRONG) for i in range(50)]
    assert replies == [ADDRESS_BLOCKED] * 50
    assert len(calls) == 2


@pytest.fixture
def real_argon2(settings, make_login):
    """Alice with a hash made with the real default argon2 parameters, and its CPU cost."""
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "ARGON2": DEFAULTS["ARGON2"]}
    login = make_login(ALICE, PASSWORD)
    assert login.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    started = time.process_time()
    assert hashing.verify(login.password_hash, WRONG) == (False, False)
    return time.process_time() - started  # argon2's lanes are threads of this process


def test_blocked_address_costs_no_argon2_work(clients, penalties, real_argon2):
    """50 refusals, each on a new TLS connection, cost less CPU than 10 verifications."""
    penalties(IP_BLOCK_AFTER=2)
    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    # CPU of the whole process: the listener's threads and the clients' TLS together.
    started = time.process_time()
    replies = [clients.attempt(ALICE, PASSWORD) for _ in range(50)]
    refusals = time.process_time() - started
    assert replies == [ADDRESS_BLOCKED] * 50
    assert refusals < 10 * real_argon2, (refusals, real_argon2)


def verifications() -> int:
    return sum(lane["verifications"] for lane in hashing.lane_stats().values())


def test_blocked_login_costs_no_argon2_work(clients, penalties, real_argon2):
    """50 refusals in one session verify no password, and cost less CPU than a few
    verifications (the client's side and the test's own logging included)."""
    penalties(IP_BLOCK_AFTER=None, LOGIN_BLOCK_AFTER=2)
    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    before = verifications()
    with quitting(clients.connect()) as client:
        started = time.process_time()
        replies = [clients.auth(client, ALICE, PASSWORD) for _ in range(50)]
        refusals = time.process_time() - started
    assert replies == [LOGIN_BLOCKED] * 50
    assert verifications() == before
    assert refusals < 4 * real_argon2, (refusals, real_argon2)


def test_spraying_many_logins_from_one_address_is_blocked(clients, make_login, penalties):
    penalties(IP_BLOCK_AFTER=5, LOGIN_BLOCK_AFTER=5)
    make_login(ALICE, PASSWORD)
    for i in range(5):
        make_login(f"user{i}@example.com", f"secret number {i}")
    # One common password against many logins: no login fails twice, the address does.
    sprayed = [clients.attempt(f"user{i}@example.com", "Summer2025!") for i in range(5)]
    assert sprayed == [INVALID] * 5
    assert clients.attempt(ALICE, "Summer2025!") == ADDRESS_BLOCKED
    assert clients.attempt("user0@example.com", "secret number 0") == ADDRESS_BLOCKED
    logins = AuthFailureCounter.objects.filter(kind="login")
    assert sorted(logins.values_list("value", "failures")) == [
        (f"user{i}@example.com", 1) for i in range(5)
    ]
    assert not any(row.is_blocked() for row in logins)
    assert clients.attempt("user0@example.com", "secret number 0", source=OWNER)[0] == 235


# --- blocking a login -------------------------------------------------------------------


def test_login_under_attack_still_accepts_its_owner_from_another_address(
    clients, make_login, penalties
):
    penalties(IP_BLOCK_AFTER=100, LOGIN_BLOCK_AFTER=3)
    make_login(ALICE, PASSWORD)
    # A distributed guess at alice: three addresses, one guess each.
    attackers = ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
    assert [clients.attempt(ALICE, WRONG, source=a) for a in attackers] == [INVALID] * 3
    assert counter("login", ALICE).is_blocked()
    # An address that has failed for alice is refused even with the right password,
    # so a lucky guess cannot be confirmed...
    for address in attackers:
        assert clients.attempt(ALICE, PASSWORD, source=address) == LOGIN_BLOCKED
    # ...while alice, from an address that has not failed for her, gets in.
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235
    # Her success lifts nothing for the attackers.
    assert clients.attempt(ALICE, PASSWORD, source=attackers[0]) == LOGIN_BLOCKED
    assert counter("login", ALICE).is_blocked()
    # A new address gets one guess at a blocked login, then is refused too.
    assert clients.attempt(ALICE, WRONG, source="127.0.0.6") == INVALID
    assert clients.attempt(ALICE, PASSWORD, source="127.0.0.6") == LOGIN_BLOCKED
    # A login block holds for that login only: other logins from those addresses work.
    assert clients.attempt(ALICE, WRONG, source=attackers[1]) == LOGIN_BLOCKED
    assert clients.attempt("other@example.com", WRONG, source=attackers[1]) == INVALID


def test_blocked_login_never_reaches_the_hook(clients, penalties):
    penalties(IP_BLOCK_AFTER=None, LOGIN_BLOCK_AFTER=2)
    calls = []

    @on("smtp_server_auth_plain")
    async def count_calls(authz, authc, password, conn_meta):
        calls.append(authc)
        return password == PASSWORD

    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    with quitting(clients.connect()) as client:
        # 454 is temporary: the session stays open and may try again, for nothing.
        replies = [clients.auth(client, ALICE, PASSWORD) for _ in range(50)]
    assert replies == [LOGIN_BLOCKED] * 50
    assert calls == [ALICE, ALICE]
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235
    assert calls == [ALICE, ALICE, ALICE]


# --- expiry, lifting, audit ---------------------------------------------------------


def test_block_expires_after_block_duration(clients, make_login, penalties):
    penalties(IP_BLOCK_AFTER=2, BLOCK_DURATION=300)
    make_login(ALICE, PASSWORD)
    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    assert clients.attempt(ALICE, PASSWORD) == ADDRESS_BLOCKED
    # Five minutes pass: move the block's end into the past rather than wait.
    row = counter("address", ATTACKER)
    row.blocked_until = timezone.now() - timedelta(seconds=1)
    row.save()
    # An ended block starts a fresh count: one failure does not block again...
    assert clients.attempt(ALICE, WRONG) == INVALID
    row.refresh_from_db()
    assert (row.failures, row.blocked_until) == (1, None)
    # ...and the right password works.
    assert clients.attempt(ALICE, PASSWORD)[0] == 235


def test_counts_older_than_the_window_start_over(clients, make_login, penalties):
    penalties(IP_BLOCK_AFTER=3, WINDOW=60)
    make_login(ALICE, PASSWORD)
    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    AuthFailureCounter.objects.update(last_failure_at=timezone.now() - timedelta(seconds=61))
    assert clients.attempt(ALICE, WRONG) == INVALID  # the third, but the first of a new count
    assert counter("address", ATTACKER).failures == 1
    assert clients.attempt(ALICE, PASSWORD)[0] == 235


def test_admin_lifts_a_block_and_the_client_gets_in(
    clients, make_login, penalties, admin_client, admin_user
):
    penalties(IP_BLOCK_AFTER=2)
    make_login(ALICE, PASSWORD)
    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    assert clients.attempt(ALICE, PASSWORD) == ADDRESS_BLOCKED
    changelist = reverse("admin:kumosubmit_authfailurecounter_changelist")
    response = admin_client.get(changelist, {"blocked": "yes"})
    (row,) = response.context["cl"].result_list
    assert (row.kind, row.value) == ("address", ATTACKER)
    response = admin_client.post(
        changelist, {"action": "lift_blocks", "_selected_action": [row.pk]}, follow=True
    )
    assert "1 counter was reset." in [str(m) for m in response.context["messages"]]
    row.refresh_from_db()
    assert (row.failures, row.blocked_until) == (0, None)
    assert LogEntry.objects.get(object_id=str(row.pk)).user == admin_user
    assert clients.attempt(ALICE, PASSWORD)[0] == 235


def test_blocked_attempts_show_in_the_audit_table(clients, smtp_server, penalties):
    penalties(IP_BLOCK_AFTER=3, LOGIN_BLOCK_AFTER=2)

    @on("smtp_server_auth_plain")
    def refuse(authz, authc, password, conn_meta):
        return False

    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    assert clients.attempt(ALICE, WRONG) == LOGIN_BLOCKED  # the login's block comes first
    assert clients.attempt("bob@example.com", WRONG) == INVALID  # the address's third
    assert clients.attempt("bob@example.com", WRONG) == ADDRESS_BLOCKED
    smtp_server.settle()
    records = list(ConnectionRecord.objects.order_by("started_at"))
    assert [r.auth_outcome for r in records] == [
        "failure",
        "failure",
        "blocked",
        "failure",
        "blocked",
    ]
    login_block, address_block = records[2], records[4]
    assert (login_block.authc, login_block.peer_address) == (ALICE, ATTACKER)
    assert login_block.meta["auth_block"]["kind"] == "login"
    assert login_block.meta["auth_block"]["value"] == ALICE
    assert address_block.authc == "bob@example.com"
    assert address_block.meta["auth_block"]["kind"] == "address"
    assert address_block.meta["auth_block"]["value"] == ATTACKER
    assert address_block.meta["auth_attempts"][-1]["outcome"] == "blocked"


# --- shared across listeners and processes ---------------------------------------


def test_counts_are_shared_between_two_listeners(clients, smtp_server, pki, make_login, penalties):
    penalties(DELAY=0.05, MAX_DELAY=1.0, IP_BLOCK_AFTER=3)
    make_login(ALICE, PASSWORD)
    other = LiveSMTPServer(pki)
    other.start()
    try:
        assert clients.attempt(ALICE, WRONG, server=smtp_server) == INVALID
        assert clients.attempt(ALICE, WRONG, server=other) == INVALID
        assert counter("address", ATTACKER).failures == 2
        # The third failure, on the first listener, blocks the address on both.
        assert clients.attempt(ALICE, WRONG, server=smtp_server) == INVALID
        assert clients.attempt(ALICE, PASSWORD, server=other) == ADDRESS_BLOCKED
        assert clients.attempt(ALICE, PASSWORD, server=smtp_server) == ADDRESS_BLOCKED
        other.settle()
    finally:
        other.stop()


def test_a_block_is_enforced_by_another_process(
    clients, make_login, penalties, tmp_path, transactional_db
):
    penalties(IP_BLOCK_AFTER=2)
    make_login(ALICE, PASSWORD)
    assert [clients.attempt(ALICE, WRONG) for _ in range(2)] == [INVALID] * 2
    port = free_port()
    data = tmp_path / "data"
    process = ManageProcess(
        "runsmtpd",
        "--listen",
        f"127.0.0.1:{port}",
        "--hostname",
        "localhost",
        env=command_env(data),
    )
    try:
        process.wait_for("listening on")
        context = ssl.create_default_context(cafile=str(data / "selfsigned-cert.pem"))

        def attempt(source: str, password: str) -> tuple[int, bytes]:
            client = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0))
            with quitting(client):
                client.starttls(context=context)
                client.ehlo()
                return clients.auth(client, ALICE, password)

        assert attempt(ATTACKER, PASSWORD) == ADDRESS_BLOCKED
        assert attempt(OWNER, PASSWORD)[0] == 235
    finally:
        process.kill()


def test_concurrent_failures_are_all_counted(transactional_db):
    """Many sessions failing at once, each with its own database connection."""
    policy = throttle.policy()
    keys = throttle.Keys.of(policy, "192.0.2.7", ALICE)
    errors = []

    def fail_five_times() -> None:
        try:
            for _ in range(5):
                throttle._record_failure(policy, keys, timezone.now())
        except Exception as error:  # reported below, with the thread's traceback gone
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=fail_five_times) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = {row.kind: row for row in AuthFailureCounter.objects.all()}
    assert {kind: row.failures for kind, row in rows.items()} == {
        "address": 40,
        "login": 40,
        "pair": 40,
    }
    assert rows["address"].is_blocked()
    assert rows["login"].is_blocked()
    assert rows["pair"].blocked_until is None


# --- settings ------------------------------------------------------------------------


def test_disabled_penalties_count_nothing(clients, penalties):
    penalties(ENABLED=False, IP_BLOCK_AFTER=1, LOGIN_BLOCK_AFTER=1)

    @on("smtp_server_auth_plain")
    def refuse(authz, authc, password, conn_meta):
        return False

    assert [clients.attempt(ALICE, WRONG) for _ in range(3)] == [INVALID] * 3
    assert not AuthFailureCounter.objects.exists()


def test_one_key_may_be_overridden(settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "BRUTE_FORCE": {"IP_BLOCK_AFTER": 3}}
    policy = throttle.policy()
    assert policy.ip_block_after == 3
    assert policy.login_block_after == DEFAULTS["BRUTE_FORCE"]["LOGIN_BLOCK_AFTER"]
    assert policy.block_duration == timedelta(seconds=DEFAULTS["BRUTE_FORCE"]["BLOCK_DURATION"])
    assert [policy.delay_for(n) for n in range(7)] == [0, 1, 2, 4, 8, 15, 15]
    assert policy.delay_for(10_000) == 15


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        (None, None),
    ],
)
def test_address_keys_group_ipv6_by_network(address, key):
    assert throttle.address_key(address, 64) == key


def test_ipv6_prefix_128_counts_each_address():
    assert throttle.address_key("2001:db8::1", 128) == "2001:db8::1"


@pytest.mark.parametrize(
    "values",
    [
        {"WINDOW": 0},
        {"WINDOW": "900"},
        {"BLOCK_DURATION": -1},
        {"DELAY": -0.1},
        {"MAX_DELAY": True},
        {"DELAY": 2.0, "MAX_DELAY": 1.0},
        {"MAX_DELAY": 300},  # not below IDLE_TIMEOUT
        {"IP_BLOCK_AFTER": 0},
        {"LOGIN_BLOCK_AFTER": 2.5},
        {"IPV6_PREFIX": 16},
        {"ENABLED": "yes"},
        {"BLOCK_AFTER": 5},  # an unknown key
    ],
)
def test_check_refuses_bad_values(settings, values):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "BRUTE_FORCE": values}
    assert "kumosubmit.E010" in [message.id for message in run_checks()]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"IP_BLOCK_AFTER": None, "LOGIN_BLOCK_AFTER": None},
        {"DELAY": 0, "MAX_DELAY": 0},
        {"WINDOW": 0.5, "BLOCK_DURATION": 86400, "IPV6_PREFIX": 128, "ENABLED": False},
    ],
)
def test_check_accepts_good_values(settings, values):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "BRUTE_FORCE": values}
    assert "kumosubmit.E010" not in [message.id for message in run_checks()]


def test_check_refuses_a_non_dict(settings):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "BRUTE_FORCE": [("DELAY", 1)]}
    assert "kumosubmit.E010" in [message.id for message in run_checks()]
