"""The legitimate user first (issue 19): AUTH lanes and password-spray detection, over real sockets.

A login and network that authenticated lately (a known pair) has its argon2 work
done ahead of everyone else's; every other attempt waits in a bounded lane, and is
answered 454 at once, unverified, when that lane is full. Failures from many
addresses tighten the lane site-wide until the spray ends. The listener binds
127.0.0.1; Linux routes all of 127.0.0.0/8 to lo, so clients bind other loopback
addresses (and other /24s than the owner's) to be other clients.
"""

from __future__ import annotations

import smtplib
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from django.urls import reverse
from django.utils import timezone

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.conf import DEFAULTS
from kumosubmit.credentials import hashing, lanes
from kumosubmit.credentials.models import KnownPair, SprayEvent
from kumosubmit.credentials.service import authenticate
from kumosubmit.hooks import on
from tests.live import free_port, quitting
from tests.process import ManageProcess, command_env
from tests.refusal_timing import make_logins, measure
from tests.security.test_bruteforce import Clients
from tests.security.test_timing import TOLERANCE
from tests.test_auth_cache import create_app_password

ALICE = "alice@example.com"
BOB = "bob@example.com"
PASSWORD = "correct horse battery"
WRONG = "wrong horse battery"
#: Alice's usual address; her network is 127.0.0.0/24.
OWNER = "127.0.0.2"
INVALID = (535, b"5.7.8 Authentication credentials invalid")
LANE_FULL = (454, b"4.7.0 Too many authentication attempts in progress, try again later")
#: A verification of a few milliseconds, as the hash should dominate an AUTH.
COSTLY_ARGON2 = {"time_cost": 3, "memory_cost": 32768, "parallelism": 1}


def attacker(n: int, host: int = 7) -> str:
    """The n-th attacking address: each in a /24 of its own, none the owner's."""
    return f"127.{1 + n // 250}.{1 + n % 250}.{host}"


@pytest.fixture
def lanes_config(settings, lenient_limits) -> Iterator[Callable[..., None]]:
    """AUTH_LANES keys (the brute-force penalties out of the way), a pool of one shared
    argon2 thread and one reserved for the priority lane, and no spray state carried over."""

    def configure(argon2: dict[str, int] | None = None, **values: object) -> None:
        settings.KUMOSUBMIT = {
            **settings.KUMOSUBMIT,
            "ARGON2_THREADS": 1,
            "ARGON2_PRIORITY_THREADS": 1,
            # Long enough that a loaded machine's waits are not cut (a test of its own).
            "AUTH_LANES": {"MAX_WAIT": 9, **values},
            **({"ARGON2": argon2} if argon2 else {}),
        }
        hashing._executor.cache_clear()  # a pool of the configured size
        lanes.forget_spray_state()

    yield configure
    hashing._executor.cache_clear()
    lanes.forget_spray_state()


@pytest.fixture
def clients(smtp_server, secret_watch) -> Clients:
    return Clients(smtp_server, secret_watch)


@contextmanager
def busy_pool() -> Iterator[None]:
    """Every shared argon2 thread busy until the block ends: the bounded lane only queues."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> None:
        started.release()
        release.wait(30)

    futures = [
        hashing._executor().submit(hold, lane=hashing.BOUNDED) for _ in range(hashing.pool_size())
    ]
    for _ in futures:
        assert started.acquire(timeout=10)
    try:
        yield
    finally:
        release.set()
        for future in futures:
            future.result(10)


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


def bounded(key: str) -> int:
    return hashing.lane_stats()[hashing.BOUNDED][key]


def priority(key: str) -> int:
    return hashing.lane_stats()[hashing.PRIORITY][key]


def timed(clients: Clients, authc: str, password: str, source: str) -> tuple[tuple, float]:
    with quitting(clients.connect(source)) as client:
        started = time.monotonic()
        reply = clients.auth(client, authc, password)
        return reply, time.monotonic() - started


# --- known pairs -----------------------------------------------------------------------------


def test_a_good_auth_makes_its_login_and_network_known(clients, make_login, lanes_config):
    lanes_config()
    login = make_login(ALICE, PASSWORD)
    assert clients.attempt(ALICE, WRONG, source=OWNER) == INVALID
    assert not KnownPair.objects.exists()  # a failure makes nothing known
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235
    pair = KnownPair.objects.get()
    assert (pair.login_id, pair.network, pair.failures) == (login.pk, "127.0.0.0/24", 0)
    # Another address of the /24 is the same network: it goes first too.
    assert clients.attempt(ALICE, PASSWORD, source="127.0.0.9")[0] == 235
    assert clients.attempt(ALICE, PASSWORD, source=attacker(1))[0] == 235
    clients.server.settle()
    lanes_seen = [
        row.auth_lane for row in ConnectionRecord.objects.order_by("started_at", "pk").all()
    ]
    assert lanes_seen == ["bounded", "bounded", "priority", "bounded"]
    assert sorted(KnownPair.objects.values_list("network", flat=True)) == [
        "127.0.0.0/24",
        "127.1.2.0/24",
    ]
    # The audit row's meta keeps the lane per attempt.
    record = ConnectionRecord.objects.filter(auth_lane="priority").get()
    assert record.meta["auth_attempts"][0]["lane"] == "priority"


def test_a_known_success_is_written_only_when_new_or_stale(clients, make_login, lanes_config):
    lanes_config()
    make_login(ALICE, PASSWORD)
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235
    first = KnownPair.objects.get().last_success_at
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235
    assert KnownPair.objects.get().last_success_at == first  # fresh: not written again
    KnownPair.objects.update(last_success_at=first - lanes.policy().refresh_after)
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235
    assert KnownPair.objects.get().last_success_at > first


def test_an_app_password_makes_the_address_that_used_it_known(clients, make_login, lanes_config):
    lanes_config()
    login = make_login(ALICE, PASSWORD)
    _, text = create_app_password(login, "Phone")
    clients.watch.add(text)
    assert clients.attempt(ALICE, text, source=OWNER)[0] == 235
    assert KnownPair.objects.get().network == "127.0.0.0/24"
    assert clients.attempt(ALICE, text, source=OWNER)[0] == 235
    clients.server.settle()
    assert list(
        ConnectionRecord.objects.order_by("started_at", "pk").values_list("auth_lane", flat=True)
    ) == ["bounded", "priority"]


def test_a_known_pair_that_keeps_failing_loses_its_priority(clients, make_login, lanes_config):
    """Someone else in the owner's network cannot have the priority lane for ever."""
    lanes_config(KNOWN_MAX_FAILURES=2)
    make_login(ALICE, PASSWORD)
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235
    assert [clients.attempt(ALICE, WRONG, source="127.0.0.66") for _ in range(3)] == [INVALID] * 3
    assert KnownPair.objects.get().failures == 2  # the third was in the bounded lane
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235  # the owner: known again
    assert KnownPair.objects.get().failures == 0
    clients.server.settle()
    assert list(
        ConnectionRecord.objects.order_by("started_at", "pk").values_list("auth_lane", flat=True)
    ) == ["bounded", "priority", "priority", "bounded", "bounded"]


def test_the_known_network_is_the_configured_prefix():
    policy = lanes.policy()
    assert lanes.network_key("192.0.2.77", policy) == "192.0.2.0/24"
    assert lanes.network_key("::ffff:192.0.2.77", policy) == "192.0.2.0/24"
    assert lanes.network_key("2001:db8:1:2:3::4", policy) == "2001:db8:1:2::/64"
    assert lanes.network_key(None, policy) is None
    wider = lanes.Policy(**{**policy.__dict__, "ipv6_prefix": 48, "ipv4_prefix": 16})
    assert lanes.network_key("2001:db8:1:2:3::4", wider) == "2001:db8:1::/48"
    assert lanes.network_key("192.0.2.77", wider) == "192.0.0.0/16"


# --- the bounded lane ------------------------------------------------------------------------


def test_a_full_lane_gives_454_unverified_and_the_known_pair_goes_first(
    clients, make_login, lanes_config, smtp_server
):
    """The short spray: while attackers fill the bounded lane, the owner is answered first."""
    lanes_config(QUEUE=2)
    make_login(ALICE, PASSWORD)
    make_login(BOB, PASSWORD)
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235  # Alice's usual network
    before = hashing.lane_stats()
    with ThreadPoolExecutor(2) as pool, busy_pool():
        waiting = [pool.submit(clients.attempt, BOB, WRONG, attacker(n)) for n in (1, 2)]
        wait_until(lambda: bounded("queued") == 2)
        # Full: an unknown login and a real one with a wrong password get the same reply.
        assert clients.attempt("nobody@example.com", WRONG, source=attacker(3)) == LANE_FULL
        assert clients.attempt(BOB, WRONG, source=attacker(4)) == LANE_FULL
        assert clients.attempt(BOB, PASSWORD, source=attacker(5)) == LANE_FULL
        # The known pair is verified at once, ahead of the two that wait.
        reply, _ = timed(clients, ALICE, PASSWORD, OWNER)
        assert reply[0] == 235
        assert not any(future.done() for future in waiting)
        during = hashing.lane_stats()
    assert [future.result(10) for future in waiting] == [INVALID] * 2
    # No verification for the three refused: only the two that waited were verified.
    assert during[hashing.BOUNDED]["verifications"] == before[hashing.BOUNDED]["verifications"]
    assert bounded("verifications") - before[hashing.BOUNDED]["verifications"] == 2
    assert bounded("refused") - before[hashing.BOUNDED]["refused"] == 3
    assert (
        during[hashing.PRIORITY]["verifications"] - before[hashing.PRIORITY]["verifications"] == 1
    )
    assert bounded("queued") == 0
    smtp_server.settle()
    rows = ConnectionRecord.objects.exclude(peer_address=OWNER)
    assert sorted(rows.values_list("auth_outcome", "auth_lane")) == [
        ("busy", "bounded"),
        ("busy", "bounded"),
        ("busy", "bounded"),
        ("failure", "bounded"),
        ("failure", "bounded"),
    ]


def test_an_attempt_that_waits_too_long_gets_454_unverified(clients, make_login, lanes_config):
    lanes_config(QUEUE=4, MAX_WAIT=0.5)
    make_login(BOB, PASSWORD)
    before = hashing.lane_stats()[hashing.BOUNDED]
    with busy_pool():
        reply, seconds = timed(clients, BOB, WRONG, attacker(1))
        assert reply == LANE_FULL
        assert 0.5 <= seconds < 5
        assert bounded("queued") == 0  # its place is free again
    wait_until(lambda: bounded("started") > before["started"])  # the pool is free again
    assert bounded("verifications") == before["verifications"]  # it never ran
    assert bounded("refused") == before["refused"] + 1
    assert clients.attempt(BOB, WRONG, source=attacker(2)) == INVALID


def test_a_short_spray_cannot_delay_the_known_user(clients, make_login, lanes_config):
    """Attackers from many addresses keep the bounded lane full for a few seconds; the
    owner, who signed in before from her usual address, is answered as if alone."""
    lanes_config(argon2=COSTLY_ARGON2, QUEUE=4, SPRAY_DELAY=0)
    make_login(ALICE, PASSWORD)
    for _ in range(3):  # warm up; and Alice's network is known
        assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235
    alone = [timed(clients, ALICE, PASSWORD, OWNER)[1] for _ in range(5)]
    stop = threading.Event()
    replies: list[int] = []

    def spray(task: int) -> None:
        n = task
        while not stop.is_set():
            n += 8
            authc = ALICE if n % 3 else f"nobody{n}@example.com"
            try:
                replies.append(clients.attempt(authc, f"guess {n}", source=attacker(n))[0])
            except (smtplib.SMTPException, OSError, ssl.SSLError):
                replies.append(0)

    before = bounded("verifications")
    with ThreadPoolExecutor(8) as pool:
        for task in range(8):
            pool.submit(spray, task)
        try:
            wait_until(lambda: bounded("refused") > 0 or bounded("queued") >= 3)
            during = [timed(clients, ALICE, PASSWORD, OWNER) for _ in range(10)]
        finally:
            stop.set()
    assert [reply[0] for reply, _ in during] == [235] * 10
    assert bounded("verifications") > before  # the attackers were verified, after her
    assert set(replies) <= {535, 454}, set(replies)
    assert 454 in replies  # the lane was full at times
    # As fast as alone (a verification each), within the noise of a shared machine.
    seconds = [s for _, s in during]
    assert statistics.median(seconds) < 3 * statistics.median(alone) + 0.1, (alone, seconds)


# --- spray detection ---------------------------------------------------------------------------


def test_a_spray_from_many_addresses_tightens_the_lane_until_it_ends(
    clients, make_login, lanes_config, admin_client
):
    hold = 5.0
    lanes_config(
        QUEUE=8,
        SPRAY_QUEUE=1,
        SPRAY_DELAY=1.0,
        SPRAY_LOGIN_ADDRESSES=4,
        SPRAY_UNKNOWN_ADDRESSES=4,
        SPRAY_HOLD=hold,
    )
    make_login(ALICE, PASSWORD)
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235
    # Before: a failure is answered at once.
    reply, seconds = timed(clients, ALICE, WRONG, attacker(0))
    assert reply == INVALID and seconds < 0.8
    # Alice's login fails from one address after another: a spray (a window boundary
    # may split the count once).
    for n in range(1, 9):
        assert clients.attempt(ALICE, WRONG, source=attacker(n)) == INVALID
        if SprayEvent.objects.exists():
            break
    event = SprayEvent.objects.get()
    assert (event.scope, event.login, event.addresses) == ("login", ALICE, 4)
    # Tightened, for every login and for unknown names: a longer delay for failures ...
    reply, seconds = timed(clients, "nobody@example.com", WRONG, attacker(20))
    assert reply == INVALID and seconds >= 1.0
    # ... and a shorter queue: one waits, the next is refused at once.
    with ThreadPoolExecutor(1) as pool, busy_pool():
        waiting = pool.submit(clients.attempt, BOB, WRONG, attacker(21))
        wait_until(lambda: bounded("queued") == 1)
        assert clients.attempt(BOB, WRONG, source=attacker(22)) == LANE_FULL
        # The known user keeps her priority, with no delay.
        reply, seconds = timed(clients, ALICE, PASSWORD, OWNER)
        assert reply[0] == 235 and seconds < 0.8
    assert waiting.result(10) == INVALID
    # The admin shows it as going on.
    changelist = reverse("admin:kumosubmit_sprayevent_changelist")
    assert ALICE.encode() in admin_client.get(changelist, {"ongoing": "yes"}).content
    # Unknown names from many addresses are a spray of their own.
    for n in range(30, 38):
        assert clients.attempt(f"nobody{n}@example.com", WRONG, source=attacker(n)) == INVALID
        if SprayEvent.objects.filter(scope="unknown").exists():
            break
    assert SprayEvent.objects.filter(scope="unknown", login="").exists()
    # The spray ends: once SPRAY_HOLD has passed without it, the lane loosens again.
    time.sleep(hold + lanes.SPRAY_STATE_TTL + 0.2)
    reply, seconds = timed(clients, ALICE, WRONG, attacker(1))  # counted already
    assert reply == INVALID and seconds < 0.8
    with ThreadPoolExecutor(2) as pool, busy_pool():
        waiting = [pool.submit(clients.attempt, BOB, WRONG, attacker(n)) for n in (1, 2)]
        wait_until(lambda: bounded("queued") == 2)
    assert [future.result(10) for future in waiting] == [INVALID] * 2
    assert ALICE.encode() in admin_client.get(changelist, {"ongoing": "no"}).content
    assert ALICE.encode() not in admin_client.get(changelist, {"ongoing": "yes"}).content


def test_the_timing_rule_holds_in_the_bounded_lane_during_a_spray(
    smtp_server, secret_watch, lanes_config
):
    """Unknown logins and wrong passwords are answered alike while tightened: the lane and the
    spray delay are the same for both (the tolerance is test_timing.py's, for a noisy machine)."""
    lanes_config(argon2=COSTLY_ARGON2, SPRAY_DELAY=0.1, SPRAY_HOLD=600)
    now = timezone.now()
    SprayEvent.objects.create(scope="unknown", started_at=now, last_seen_at=now)
    secret_watch.add(PASSWORD)
    tries = 10
    make_logins(tries + 2, PASSWORD)
    measure(smtp_server, PASSWORD, 2, first=tries)  # warm up
    times = measure(smtp_server, PASSWORD, tries)
    medians = {kind: statistics.median(samples) for kind, samples in times.items()}
    assert medians["wrong-password"] > 0.1, medians  # the spray delay is applied
    ratio = medians["unknown"] / medians["wrong-password"]
    assert abs(ratio - 1) < TOLERANCE, medians


def test_spray_counts_are_shared_with_another_process(
    clients, make_login, lanes_config, tmp_path, transactional_db
):
    """A spray seen by this listener tightens a runsmtpd process on the same database."""
    lanes_config(SPRAY_LOGIN_ADDRESSES=3)
    make_login(ALICE, PASSWORD)
    for n in range(1, 7):
        assert clients.attempt(ALICE, WRONG, source=attacker(n)) == INVALID
        if SprayEvent.objects.exists():
            break
    assert SprayEvent.objects.exists()
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
        client = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(attacker(40), 0))
        with quitting(client):
            client.starttls(context=context)
            client.ehlo()
            started = time.monotonic()
            reply = clients.auth(client, "nobody@example.com", WRONG)
            seconds = time.monotonic() - started
        assert reply == INVALID
        # The other process has the default settings: SPRAY_DELAY (the test settings
        # have no brute-force delay).
        assert seconds >= DEFAULTS["AUTH_LANES"]["SPRAY_DELAY"]
    finally:
        process.kill()


def test_a_hook_that_checks_passwords_itself_still_gets_lanes(clients, lanes_config):
    """A project's own async handler that verifies with hashing.averify runs in the lane."""
    lanes_config(QUEUE=1)
    seen: list[str] = []

    @on("smtp_server_auth_plain")
    async def check(authz, authc, password, conn_meta):
        seen.append(hashing.current_lane())
        return await authenticate(authz, authc, password, conn_meta)

    assert clients.attempt(ALICE, WRONG, source=attacker(1)) == INVALID
    assert seen == [hashing.BOUNDED]


def test_defaults_are_documented_in_conf():
    assert set(DEFAULTS["AUTH_LANES"]) >= {"QUEUE", "SPRAY_QUEUE", "KNOWN_PAIR_TTL"}
    assert lanes.policy().queue_length(spray=True) < lanes.policy().queue_length(spray=False)


def test_the_lane_of_a_known_pair_is_decided_without_the_password(
    clients, make_login, lanes_config
):
    """The wrong password of a known pair is verified in the priority lane, and counted."""
    lanes_config()
    make_login(ALICE, PASSWORD)
    assert clients.attempt(ALICE, PASSWORD, source=OWNER)[0] == 235
    before = priority("verifications")
    assert clients.attempt(ALICE, WRONG, source=OWNER) == INVALID
    assert priority("verifications") == before + 1
    assert KnownPair.objects.get().failures == 1


def test_pruneaudit_drops_spent_spray_marks_and_expired_pairs(db):
    from io import StringIO

    from django.core.management import call_command

    from kumosubmit.credentials.models import SmtpLogin, SprayMark

    now = timezone.now()
    window = int(now.timestamp()) // lanes.policy().spray_window
    for n, at in enumerate((window - 5, window - 2, window - 1, window)):
        SprayMark.objects.create(scope="unknown", window=at, address=f"192.0.2.{n}")
    login = SmtpLogin.objects.create(username=ALICE, password_hash="x")
    ttl = lanes.policy().known_pair_ttl
    KnownPair.objects.create(login=login, network="192.0.2.0/24", last_success_at=now - 2 * ttl)
    KnownPair.objects.create(login=login, network="198.51.100.0/24", last_success_at=now)
    out = StringIO()
    call_command("pruneaudit", stdout=out)
    assert "Deleted 2 spray mark(s) and 1 expired known pair(s)." in out.getvalue()
    assert sorted(SprayMark.objects.values_list("window", flat=True)) == [window - 1, window]
    assert list(KnownPair.objects.values_list("network", flat=True)) == ["198.51.100.0/24"]


@pytest.mark.parametrize(
    "values",
    [
        {"QUEUE": 0},
        {"SPRAY_QUEUE": 64},
        {"MAX_WAIT": -1},
        {"IPV4_PREFIX": 33},
        {"IPV6_PREFIX": 8},
        {"SPRAY_WINDOW": 0},
        {"ENABLED": "yes"},
        {"SPRAY_DELAY": 1000},
        {"NO_SUCH_KEY": 1},
    ],
)
def test_check_refuses_bad_lane_settings(settings, values):
    from django.core.checks import run_checks

    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "AUTH_LANES": values}
    assert "kumosubmit.E080" in [message.id for message in run_checks()]


def test_check_accepts_the_defaults_and_a_partial_dict(settings):
    from django.core.checks import run_checks

    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "AUTH_LANES": {"QUEUE": 64}}
    assert "kumosubmit.E080" not in [message.id for message in run_checks()]
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "ARGON2_PRIORITY_NICENESS": 20}
    assert "kumosubmit.E011" in [message.id for message in run_checks()]


def test_check_warns_of_a_wait_the_hook_timeout_would_cut(settings):
    from django.core.checks import run_checks

    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "HOOK_TIMEOUT": 3}
    assert "kumosubmit.W080" in [message.id for message in run_checks()]
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "AUTH_LANES": {"MAX_WAIT": 2}}
    assert "kumosubmit.W080" not in [message.id for message in run_checks()]
