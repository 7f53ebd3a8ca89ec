"""Sending limits in one listener: GCRA rules, app passwords, refusals that do not count,
the notice once per window, and each of these on the Redis backend (kumosubmit/sendlimits/)."""

from __future__ import annotations

import email
import email.policy
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.core import mail

from kumosubmit import hooks
from kumosubmit.credentials.models import AllowedSender, create_app_password
from kumosubmit.hooks import reject
from kumosubmit.sendlimits.backends import get_backend, now_us
from kumosubmit.sendlimits.sessions import login_buckets
from kumosubmit.spool.models import Message
from tests.live import plain_blob, quitting

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
BODY = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHi\r\n"


@pytest.fixture(params=["database", "redis"])
def backend(request, settings):
    """Each test once on the database backend and once on Redis (our own redis-server)."""
    if request.param == "redis":
        redis = request.getfixturevalue("redis_server")
        redis.flush()
        settings.CACHES = {
            **settings.CACHES,
            "sendlimits": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": redis.url,
            },
        }
        settings.KUMOSUBMIT = {
            **settings.KUMOSUBMIT,
            "SEND_LIMITS_BACKEND": "kumosubmit.sendlimits.backends.CacheBackend",
            "SEND_LIMITS_CACHE": "sendlimits",
        }
    return request.param


@pytest.fixture
def limits(settings, backend):
    def set_limits(messages=None, recipients=None, **more):
        settings.KUMOSUBMIT = {
            **settings.KUMOSUBMIT,
            "SEND_LIMITS": {"MESSAGES": messages, "RECIPIENTS": recipients},
            **more,
        }

    return set_limits


def session(smtp_server, password=PASSWORD, user=ALICE):
    client = smtp_server.starttls()
    code = client.docmd("AUTH", "PLAIN " + plain_blob("", user, password))[0]
    assert code == 235
    return client


def send_one(client, recipients=("bob@example.org",), sender=ALICE):
    """MAIL, RCPTs, DATA: the first reply that is not a success, or the DATA reply."""
    code, text = client.mail(sender)
    if code != 250:
        return code, text.decode()
    for recipient in recipients:
        code, text = client.rcpt(recipient)
        if code != 250:
            client.rset()
            return code, text.decode()
    code, text = client.data(BODY)
    return code, text.decode()


def stored(login=ALICE):
    return Message.objects.filter(authn_id=login).count()


def use_of(login):
    return {str(b.rule): n for b, n in get_backend().usage(login_buckets(login)).items()}


def test_a_burst_up_to_the_rule_and_no_more(smtp_server, make_login, limits):
    limits(messages=["5/minute", "1000/day"])
    login = make_login(ALICE, PASSWORD)
    with quitting(session(smtp_server)) as client:
        codes = [send_one(client)[0] for _ in range(7)]
        code, text = send_one(client)
    assert codes == [250] * 5 + [451] * 2
    assert code == 451
    assert text.startswith("4.7.1 Sending limit of this login reached (5 messages per minute);")
    assert "try again in 12 seconds" in text or "try again in 11 seconds" in text
    assert stored() == 5
    smtp_server.settle()  # the connection gives back what it held of 1000/day
    assert use_of(login) == {"5/minute": 5, "1000/day": 5}


def test_recipients_are_counted_at_rcpt(smtp_server, make_login, limits):
    limits(recipients=["3/hour"])
    make_login(ALICE, PASSWORD)
    with quitting(session(smtp_server)) as client:
        assert client.mail(ALICE)[0] == 250
        assert [client.rcpt(f"r{n}@example.org")[0] for n in range(4)] == [250, 250, 250, 451]
        assert client.data(BODY)[0] == 250  # with the three accepted
        # Nothing left: the next message is refused at MAIL FROM (it needs a recipient).
        code, text = client.mail(ALICE)
    assert code == 451
    assert b"(3 recipients per hour)" in text
    assert Message.objects.get().rcpt_tos == ["r0@example.org", "r1@example.org", "r2@example.org"]


def test_the_limit_is_the_logins_not_the_addresss(smtp_server, make_login, limits):
    limits(messages=["2/hour"])
    make_login(ALICE, PASSWORD)
    other = make_login("shared-desk", "another password")
    AllowedSender.objects.create(login=other, pattern=ALICE)
    with quitting(session(smtp_server)) as client:
        assert [send_one(client)[0] for _ in range(3)] == [250, 250, 451]
    # Another login sending as the same address has its own allowance.
    with quitting(session(smtp_server, "another password", "shared-desk")) as client:
        assert [send_one(client)[0] for _ in range(3)] == [250, 250, 451]


def test_an_app_password_has_tighter_limits_of_its_own(smtp_server, make_login, limits):
    limits(messages=["5/hour"])
    login = make_login(ALICE, PASSWORD)
    app_password, secret = create_app_password(login, "Phone")
    app_password.message_limits = ["2/hour"]
    app_password.save()
    with quitting(session(smtp_server, secret)) as client:
        codes = [send_one(client)[0] for _ in range(3)]
        _code, text = send_one(client)
    assert codes == [250, 250, 451]
    assert text.startswith("4.7.1 Sending limit of this app password reached (2 messages per hour)")
    # What the app password sent counts against the login too: 3 of its 5 remain.
    with quitting(session(smtp_server)) as client:
        assert [send_one(client)[0] for _ in range(4)] == [250, 250, 250, 451]
    assert stored() == 5


def test_a_refused_transaction_does_not_count(smtp_server, make_login, limits):
    limits(messages=["2/hour"], recipients=["2/hour"])
    login = make_login(ALICE, PASSWORD)

    def refuse_marked(message, conn_meta):
        if b"Subject: refuse" in message.content:
            reject(550, "5.7.1 not this one")

    with hooks.override("smtp_server_data", refuse_marked):
        with quitting(session(smtp_server)) as client:
            for _ in range(5):  # RSET after MAIL and RCPT
                assert client.mail(ALICE)[0] == 250
                assert client.rcpt("bob@example.org")[0] == 250
                assert client.rset()[0] == 250
            for _ in range(5):  # DATA refused by a handler
                assert client.mail(ALICE)[0] == 250
                assert client.rcpt("bob@example.org")[0] == 250
                assert client.data(b"Subject: refuse\r\n\r\nno\r\n")[0] == 550
            for _ in range(5):  # a sender the policy refuses (553, before the limits)
                assert client.mail("mallory@example.net")[0] == 553
            # Each MAIL FROM that reached the limits gave back the transaction before it;
            # the last refused DATA's unit is held until the next one, or the end of the
            # connection.
            assert use_of(login) == {"2/hour": 1}
            # The connection goes away in the middle of a transaction.
            assert client.mail(ALICE)[0] == 250
            assert client.rcpt("bob@example.org")[0] == 250
            assert use_of(login) == {"2/hour": 1}
        smtp_server.settle()
        assert use_of(login) == {"2/hour": 0}
        with quitting(session(smtp_server)) as client:
            assert [send_one(client)[0] for _ in range(3)] == [250, 250, 451]
    assert stored() == 2


def test_the_notice_goes_to_the_owner_and_admins_once_per_window(
    smtp_server, make_login, limits, settings
):
    limits(messages=["1/hour"], SITE_URL="https://mail.example.com")
    settings.ADMINS = [("Postmaster", "postmaster@example.com")]
    settings.SERVER_EMAIL = "kumosubmit@example.com"
    owner = get_user_model().objects.create_user("ann", "ann@example.org", "x")
    login = make_login(ALICE, PASSWORD)
    login.owner = owner
    login.save()
    with quitting(session(smtp_server)) as client:
        assert [send_one(client)[0] for _ in range(4)] == [250, 451, 451, 451]
    with quitting(session(smtp_server)) as client:
        assert send_one(client)[0] == 451
    notices = Message.objects.filter(meta__kumosubmit_notice="send_limit")
    assert notices.count() == 1  # once in the window, whichever session or process hits it
    notice = notices.get()
    assert notice.rcpt_tos == ["ann@example.org", "postmaster@example.com"]
    assert notice.mail_from == "kumosubmit@example.com"
    assert notice.state == "queued"  # the relay sends it on like any other message
    parsed = email.message_from_bytes(bytes(notice.content), policy=email.policy.default)
    assert parsed["Subject"] == (
        "[kumosubmit] Sending limit reached: alice@example.com, 1 message per hour"
    )
    assert parsed["Auto-Submitted"] == "auto-generated"
    text = parsed.get_content()
    assert "1 of 1 used" in text
    assert f"https://mail.example.com/admin/kumosubmit/smtplogin/{login.pk}/change/" in text
    assert f"https://mail.example.com/credentials/{login.pk}/" in text


def test_the_notice_through_djangos_email_backend(smtp_server, make_login, limits, settings):
    limits(messages=["1/hour"], SEND_LIMITS_NOTICE="email_backend")
    settings.ADMINS = [("Postmaster", "postmaster@example.com")]
    login = make_login(ALICE, PASSWORD)
    _app_password, secret = create_app_password(login, "Laptop")
    with quitting(session(smtp_server, secret)) as client:
        assert [send_one(client)[0] for _ in range(3)] == [250, 451, 451]
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["postmaster@example.com"]
    assert "1 message per hour" in mail.outbox[0].subject
    assert not Message.objects.filter(meta__kumosubmit_notice="send_limit").exists()


def test_sessions_racing_for_the_last_units_get_exactly_the_limit(smtp_server, make_login, limits):
    limits(messages=["5/hour"])
    make_login(ALICE, PASSWORD)
    clients = [session(smtp_server) for _ in range(12)]
    barrier = threading.Barrier(len(clients))

    def mail(client):
        barrier.wait()
        return client.mail(ALICE)[0]

    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            codes = list(pool.map(mail, clients))
        assert sorted(codes) == [250] * 5 + [451] * 7
        for client, code in zip(clients, codes, strict=True):
            if code == 250:
                assert client.rcpt("bob@example.org")[0] == 250
                assert client.data(BODY)[0] == 250
    finally:
        for client in clients:
            client.quit()
    assert stored() == 5


def test_a_recipient_refused_after_its_reservation_is_given_back(smtp_server, make_login, limits):
    limits(recipients=["3/hour"])
    login = make_login(ALICE, PASSWORD)

    def refuse_nobody(recipient, conn_meta):
        if recipient.user == "nobody":
            reject(550, "5.1.1 no such user")

    with hooks.override("smtp_server_rcpt_to", refuse_nobody):
        with quitting(session(smtp_server)) as client:
            assert client.mail(ALICE)[0] == 250
            assert client.rcpt("ann@example.org")[0] == 250
            assert client.rcpt("nobody@example.org")[0] == 550  # reserved, then refused
            assert client.data(BODY)[0] == 250
            assert use_of(login) == {"3/hour": 2}
            # The next MAIL FROM settles: the stored message keeps the one unit it used.
            assert client.mail(ALICE)[0] == 250
            assert use_of(login) == {"3/hour": 2}
            assert client.rset()[0] == 250
        smtp_server.settle()
    assert use_of(login) == {"3/hour": 1}


def test_with_a_lease_a_refused_recipient_s_unit_still_comes_back(smtp_server, make_login, limits):
    """A message that the lease covers is reserved with no trip, but only after a stored
    transaction that used all it reserved: an unused recipient unit is given back first."""
    limits(recipients=["1000/day"])  # a lease of 50
    login = make_login(ALICE, PASSWORD)

    def refuse_nobody(recipient, conn_meta):
        if recipient.user == "nobody":
            reject(550, "5.1.1 no such user")

    with hooks.override("smtp_server_rcpt_to", refuse_nobody):
        with quitting(session(smtp_server)) as client:
            for _ in range(4):  # the lease grows: 1, 2, then 4 units held
                assert send_one(client, ("ann@example.org", "nobody@example.org"))[0] == 550
                assert send_one(client)[0] == 250
            for _ in range(3):
                assert client.mail(ALICE)[0] == 250
                assert client.rcpt("ann@example.org")[0] == 250
                assert client.rcpt("nobody@example.org")[0] == 550  # reserved, then refused
                assert client.data(BODY)[0] == 250
        smtp_server.settle()
    # Seven messages stored, one recipient each: the refused ones' units all came back.
    assert stored() == 7
    assert use_of(login) == {"1000/day": 7}


def test_the_first_message_is_reserved_with_the_auth(smtp_server, make_login, limits):
    """Where every rule has a lease, the AUTH reserves the first message: its MAIL FROM
    makes no trip. A session that sends nothing gives it back when it ends."""
    limits(messages=["1000/day"], recipients=["5000/day"])
    login = make_login(ALICE, PASSWORD)
    with quitting(session(smtp_server)):
        assert use_of(login) == {"1000/day": 1, "5000/day": 1}
    smtp_server.settle()
    assert use_of(login) == {"1000/day": 0, "5000/day": 0}
    with quitting(session(smtp_server)) as client:
        assert send_one(client)[0] == 250
        assert use_of(login) == {"1000/day": 1, "5000/day": 1}
    smtp_server.settle()
    assert use_of(login) == {"1000/day": 1, "5000/day": 1}


def test_a_rule_without_a_lease_reserves_nothing_with_the_auth(smtp_server, make_login, limits):
    limits(messages=["20/minute", "1000/day"])  # 20/minute stays exact to the message
    login = make_login(ALICE, PASSWORD)
    with quitting(session(smtp_server)) as client:
        assert use_of(login) == {"20/minute": 0, "1000/day": 0}
        assert send_one(client)[0] == 250
        assert use_of(login) == {"20/minute": 1, "1000/day": 1}


def test_a_busy_connection_reserves_ahead_and_gives_back_the_rest(smtp_server, make_login, limits):
    # 5 % of 1000 is 50: this connection's trips to the store take 1, 2, then 4 units.
    limits(messages=["1000/day"])
    login = make_login(ALICE, PASSWORD)
    with quitting(session(smtp_server)) as client:
        assert [send_one(client)[0] for _ in range(6)] == [250] * 6
        # Held by the open connection, not yet used: counted as used meanwhile.
        assert use_of(login) == {"1000/day": 7}
    smtp_server.settle()
    assert use_of(login) == {"1000/day": 6}
    assert stored() == 6


def test_near_the_limit_a_connection_asks_for_exactly_what_it_needs(
    smtp_server, make_login, limits
):
    limits(messages=["200/hour"])  # a lease of 10
    login = make_login(ALICE, PASSWORD)
    (bucket,) = login_buckets(login)
    assert get_backend().reserve([(bucket, 198)], now_us()) is None
    with quitting(session(smtp_server)) as client:
        # The second message's trip would take 2 (201 of 200): it takes its 1 instead.
        assert [send_one(client)[0] for _ in range(3)] == [250, 250, 451]
    smtp_server.settle()
    assert use_of(login) == {"200/hour": 200}


def test_without_leases_every_message_is_its_own_reservation(smtp_server, make_login, limits):
    limits(messages=["1000/day"], SEND_LIMITS_LEASE=0)
    login = make_login(ALICE, PASSWORD)
    with quitting(session(smtp_server)) as client:
        # With leases, the fourth message's trip would hold 4 (7 in all) while open.
        assert [send_one(client)[0] for _ in range(4)] == [250] * 4
        assert use_of(login) == {"1000/day": 4}
