"""KumoMTA's SMTP listener events, over real sessions: arguments, order, reject, failures."""

from __future__ import annotations

import asyncio
import email
import smtplib
import time

import pytest

from kumosubmit import hooks
from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.models import AllowedSender
from kumosubmit.credentials.service import authenticate
from kumosubmit.hooks import on, reject
from kumosubmit.spool.models import Message
from tests import hook_handlers
from tests.live import RawClient, plain_blob, quitting

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
BOB = "bob@example.org"
BODY = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHello Bob\r\n"


@pytest.fixture
def alice(make_login):
    return make_login(ALICE, PASSWORD)


def login(client: smtplib.SMTP) -> None:
    assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, PASSWORD))[0] == 235


def test_every_event_gets_its_arguments(smtp_server, alice):
    seen: dict[str, tuple] = {}

    @on("smtp_server_connection_accepted")
    def accepted(conn_meta):
        seen["connection_accepted"] = (dict(conn_meta),)

    @on("smtp_server_ehlo")
    def ehlo(domain, conn_meta, extensions):
        seen.setdefault("ehlo", []).append((domain, list(extensions), conn_meta["tls_version"]))

    @on("smtp_server_auth_plain")
    async def auth(authz, authc, password, conn_meta):
        seen["auth_plain"] = (authz, authc, password == PASSWORD)
        return None  # passes: no project handler decides, so ...

    @on("smtp_server_mail_from")
    def mail_from(sender, conn_meta):
        seen["mail_from"] = (str(sender), sender.user, sender.domain)

    @on("smtp_server_rcpt_to")
    async def rcpt_to(recipient, conn_meta):
        seen.setdefault("rcpt_to", []).append((str(recipient), recipient.user, recipient.domain))

    @on("smtp_server_data")
    def data(message, conn_meta):
        seen["data"] = (
            str(message.sender),
            [str(r) for r in message.recipients],
            message.content,
            message.get_first_named_header("subject"),
            message.from_header().addr_spec,
        )

    @on("smtp_server_message_received")
    def received(message, conn_meta):
        seen["message_received"] = (message.content, conn_meta["authn_id"])

    @on("smtp_server_rewrite_response")
    def rewrite(status, response, command, conn_meta):
        seen.setdefault("rewrite_response", []).append((status, command))

    with quitting(smtp_server.starttls()) as client:
        # ... the project's chain ends undecided: 454, never an accept.
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, PASSWORD))[0] == 454
        hooks.reset("smtp_server_auth_plain")
        login(client)
        client.sendmail(ALICE, [BOB, "carol@example.net"], BODY)

    meta = seen["connection_accepted"][0]
    assert meta["peer_address"] == "127.0.0.1" and meta["received_from"].startswith("127.0.0.1:")
    assert meta["ehlo_domain"] is None  # before the greeting
    (plain_ehlo, tls_ehlo) = seen["ehlo"]
    assert plain_ehlo[0] == tls_ehlo[0] == "client.test"
    assert "STARTTLS" in plain_ehlo[1] and not any(e.startswith("AUTH") for e in plain_ehlo[1])
    assert "AUTH LOGIN OAUTHBEARER PLAIN XOAUTH2" in tls_ehlo[1] and tls_ehlo[2].startswith("TLSv1")
    assert "PIPELINING" in tls_ehlo[1] and "ENHANCEDSTATUSCODES" in tls_ehlo[1]
    assert seen["auth_plain"] == (ALICE, ALICE, True)  # empty authz arrives as authc
    assert seen["mail_from"] == (ALICE, "alice", "example.com")
    assert seen["rcpt_to"] == [
        (BOB, "bob", "example.org"),
        ("carol@example.net", "carol", "example.net"),
    ]
    sender, recipients, content, subject, header_from = seen["data"]
    assert (sender, recipients) == (ALICE, [BOB, "carol@example.net"])
    assert content == BODY  # before the trace header
    assert (subject, header_from) == ("hi", ALICE)
    received_content, authn = seen["message_received"]
    assert received_content.startswith(b"Received: from client.test") and received_content.endswith(
        BODY
    )
    assert authn == ALICE
    stored = Message.objects.get()
    assert bytes(stored.content) == received_content
    statuses = seen["rewrite_response"]
    assert (220, None) in statuses  # the greeting
    assert (235, "AUTH") in statuses and (250, "MAIL") in statuses and (354, "DATA") in statuses
    assert (250, "DATA") in statuses and (221, "QUIT") in statuses


def test_a_value_set_at_ehlo_travels_to_every_later_event_the_message_and_the_audit(
    smtp_server, alice
):
    read: dict[str, object] = {}

    @on("smtp_server_ehlo")
    def tenant(domain, conn_meta, extensions):
        conn_meta.set_meta("tenant", {"name": "acme", "tier": 2})

    for event in ("smtp_server_mail_from", "smtp_server_rcpt_to"):
        on(event)(
            lambda address, conn_meta, event=event: read.update(
                {event: conn_meta.get_meta("tenant")}
            )
        )
    for event in ("smtp_server_data", "smtp_server_message_received"):

        def look(message, conn_meta, event=event):
            read[event] = (conn_meta["tenant"], message.get_meta("tenant"))

        on(event)(look)

    @on("smtp_server_message_received")
    def queue(message, conn_meta):
        message.set_meta("queue", "bulk")  # the message's own meta, not the connection's

    with quitting(smtp_server.starttls()) as client:
        login(client)
        client.sendmail(ALICE, [BOB], BODY)
    acme = {"name": "acme", "tier": 2}
    assert read == {
        "smtp_server_mail_from": acme,
        "smtp_server_rcpt_to": acme,
        "smtp_server_data": (acme, acme),
        "smtp_server_message_received": (acme, acme),
    }
    stored = Message.objects.get()
    assert stored.meta["tenant"] == acme and stored.meta["queue"] == "bulk"
    # Every conn_meta key is copied, KumoMTA's names among them.
    assert stored.meta["ehlo_domain"] == "client.test"
    assert stored.meta["authn_id"] == stored.meta["authz_id"] == ALICE
    assert stored.meta["tls_protocol_version"].startswith("TLSv1")
    assert stored.meta["reception_protocol"] == "ESMTP"
    assert stored.meta["received_via"] == f"127.0.0.1:{smtp_server.starttls_port}"
    smtp_server.settle()
    record = ConnectionRecord.objects.get()
    assert record.meta["tenant"] == acme and "queue" not in record.meta
    assert record.ehlo_name == "client.test"


def test_set_meta_refuses_what_json_cannot_hold(smtp_server, alice, caplog):
    @on("smtp_server_mail_from")
    def sloppy(sender, conn_meta):
        conn_meta.set_meta("when", time)  # a module: not JSON

    with quitting(smtp_server.starttls()) as client:
        login(client)
        code, text = client.docmd(f"MAIL FROM:<{ALICE}>")
    assert (code, text[:5]) == (451, b"4.3.0")
    assert "meta value for 'when' is not JSON" in caplog.text


EVENTS_AT = {
    # event: (what the session sends, how far it gets before)
    "smtp_server_ehlo": "EHLO",
    "smtp_server_auth_plain": "AUTH",
    "smtp_server_mail_from": "MAIL",
    "smtp_server_rcpt_to": "RCPT",
    "smtp_server_data": "DATA",
    "smtp_server_message_received": "DATA",
}


def conn_meta_of(args: tuple) -> dict:
    return next(arg for arg in args if isinstance(arg, dict) and "conn_id" in arg)


def run_session(server, stop_at: str) -> tuple[list[bytes], RawClient]:
    """A session up to ``stop_at``; the reply to it."""
    client = RawClient(server)
    client.starttls()
    if stop_at == "EHLO":
        return client.command(b"EHLO client.test"), client
    assert client.command(b"EHLO client.test")[-1].startswith(b"250 ")
    auth = client.command(b"AUTH PLAIN " + plain_blob("", ALICE, PASSWORD).encode())
    if stop_at == "AUTH":
        return auth, client
    mail = client.command(f"MAIL FROM:<{ALICE}>".encode())
    if stop_at == "MAIL":
        return mail, client
    rcpt = client.command(f"RCPT TO:<{BOB}>".encode())
    if stop_at == "RCPT":
        return rcpt, client
    assert client.command(b"DATA")[0].startswith(b"354")
    return client.command(BODY + b"."), client


@pytest.mark.parametrize("event", sorted(EVENTS_AT))
def test_reject_gives_exactly_that_reply(smtp_server, alice, event):
    def refuse(*args):
        if conn_meta_of(args)["tls_version"]:  # the EHLO before STARTTLS goes through
            reject(550, "5.7.1 not today, said the policy")

    with hooks.override(event, refuse):
        reply, client = run_session(smtp_server, EVENTS_AT[event])
        assert reply == [b"550 5.7.1 not today, said the policy"]
        # The session goes on: the client may try something else.
        assert client.command(b"NOOP") == [b"250 2.0.0 OK"]
        client.close()
    assert not Message.objects.exists()


def test_reject_without_an_enhanced_code_gets_one(smtp_server, alice):
    with hooks.override("smtp_server_rcpt_to", lambda r, m: reject(450, "mailbox busy")):
        reply, client = run_session(smtp_server, "RCPT")
        client.close()
    assert reply == [b"450 4.0.0 mailbox busy"]


@pytest.mark.parametrize("event", [*sorted(EVENTS_AT), "smtp_server_connection_accepted"])
def test_reject_421_closes_the_connection(smtp_server, alice, event):
    def go_away(*args):
        if event != "smtp_server_ehlo" or conn_meta_of(args)["tls_version"]:
            reject(421, "4.7.0 go away")

    with hooks.override(event, go_away):
        if event == "smtp_server_connection_accepted":
            client = RawClient(smtp_server)
            assert client.greeting == [b"421 4.7.0 go away"]
        else:
            reply, client = run_session(smtp_server, EVENTS_AT[event])
            assert reply == [b"421 4.7.0 go away"]
        assert client.closed()
        client.close()
    assert not Message.objects.exists()


def test_reject_at_connection_with_a_5xx_greeting(smtp_server):
    @on("smtp_server_connection_accepted")
    def deny_listed(conn_meta):
        if conn_meta.get_meta("received_from").startswith("127.0.0.1:"):
            reject(554, "5.7.1 your address is on our deny list")

    client = RawClient(smtp_server)
    assert client.greeting == [b"554 5.7.1 your address is on our deny list"]
    assert client.closed()
    client.close()
    smtp_server.settle()
    assert ConnectionRecord.objects.get().meta["refused"].startswith("554 5.7.1")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("smtp_server_connection_accepted", b"421 4.3.0"),
        *[
            (event, b"454 4.7.0" if at == "AUTH" else b"451 4.3.0")
            for event, at in EVENTS_AT.items()
        ],
    ],
)
def test_a_handler_that_raises_gives_a_temporary_failure(
    smtp_server, alice, caplog, event, expected
):
    secret = "s3cret-in-the-error"

    def broken(*args):
        if event == "smtp_server_ehlo" and not conn_meta_of(args)["tls_version"]:
            return
        raise RuntimeError(f"the directory is down ({secret if event.endswith('plain') else ''})")

    with hooks.override(event, broken, builtins=[]):
        if event == "smtp_server_connection_accepted":
            client = RawClient(smtp_server)
            reply = client.greeting
        else:
            reply, client = run_session(smtp_server, EVENTS_AT[event])
        client.close()
    assert reply[0].startswith(expected), reply
    assert "the directory is down" in caplog.text
    assert not Message.objects.exists()


def test_a_handler_that_hangs_is_cut_off(smtp_server, alice, settings, caplog):
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "HOOK_TIMEOUT": 0.3}

    async def hangs(sender, conn_meta):
        await asyncio.Event().wait()

    with hooks.override("smtp_server_mail_from", hangs):
        started = time.monotonic()
        reply, client = run_session(smtp_server, "MAIL")
        elapsed = time.monotonic() - started
        client.close()
    assert reply[0].startswith(b"451 4.3.0"), reply
    assert elapsed < 5
    assert "took more than 0.3 s" in caplog.text


def test_the_chain_runs_built_ins_then_settings_then_registered(smtp_server, alice, settings):
    order = []
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "HOOKS": {"smtp_server_rcpt_to": ["tests.hook_handlers.note_rcpt"]},
        "BUILTIN_HOOKS": {
            "smtp_server_rcpt_to": [
                "kumosubmit.policy.limits.rcpt_to",
                "tests.hook_handlers.builtin_note_rcpt",
            ]
        },
    }
    hook_handlers.ORDER = order

    @on("smtp_server_rcpt_to")
    def first_registered(recipient, conn_meta):
        order.append("on-1")

    @on("smtp_server_rcpt_to")
    async def second_registered(recipient, conn_meta):
        order.append("on-2")

    with quitting(smtp_server.starttls()) as client:
        login(client)
        client.sendmail(ALICE, [BOB], BODY)
    assert order == ["builtin", "settings", "on-1", "on-2"]


def test_a_reject_stops_the_chain(smtp_server, alice):
    later = []

    @on("smtp_server_mail_from")
    def refuse(sender, conn_meta):
        reject(550, "5.7.1 no")

    @on("smtp_server_mail_from")
    def never(sender, conn_meta):
        later.append(sender)

    reply, client = run_session(smtp_server, "MAIL")
    client.close()
    assert reply == [b"550 5.7.1 no"] and later == []


def test_ehlo_may_replace_the_extensions_but_never_offer_auth_before_tls(smtp_server):
    @on("smtp_server_ehlo")
    def extensions(domain, conn_meta, extensions):
        return [*extensions, "X-KUMOSUBMIT", "AUTH PLAIN LOGIN"]

    client = RawClient(smtp_server)
    plain = client.command(b"EHLO client.test")
    assert plain[-1] == b"250 X-KUMOSUBMIT" and not any(b"AUTH" in line for line in plain)
    assert client.command(b"STARTTLS")[0].startswith(b"220")
    client.start_tls()
    on_tls = client.command(b"EHLO client.test")
    assert b"250-X-KUMOSUBMIT" in on_tls
    assert on_tls[-1] == b"250 AUTH PLAIN LOGIN"
    client.close()


def test_data_edits_the_recipients_and_the_stored_envelope_shows_it(smtp_server, alice):
    @on("smtp_server_data")
    def legal_capture(message, conn_meta):
        message.recipients = [r for r in message.recipients if r.domain != "example.net"]
        message.recipients.append(hooks.EnvelopeAddress("archive@example.com"))

    @on("smtp_server_message_received")
    def too_late(message, conn_meta):
        with pytest.raises(AttributeError):
            message.recipients = []

    with quitting(smtp_server.starttls()) as client:
        login(client)
        client.sendmail(ALICE, [BOB, "carol@example.net"], BODY)
    stored = Message.objects.get()
    assert stored.rcpt_tos == [BOB, "archive@example.com"]


def test_message_received_adds_headers_and_what_is_stored_is_what_it_left(smtp_server, alice):
    @on("smtp_server_message_received")
    def sign(message, conn_meta):
        message.prepend_header("DKIM-Signature", "v=1; a=rsa-sha256; d=example.com;\r\n\tb=abc")
        message.append_header("X-Tenant", "acme")
        seen.append(message.content)

    seen: list[bytes] = []
    with quitting(smtp_server.starttls()) as client:
        login(client)
        client.sendmail(ALICE, [BOB], BODY)
    stored = bytes(Message.objects.get().content)
    assert stored == seen[0]
    assert stored.startswith(
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com;\r\n\tb=abc\r\nReceived:"
    )
    parsed = email.message_from_bytes(stored)
    assert parsed["X-Tenant"] == "acme" and parsed.get_payload() == "Hello Bob\r\n"
    assert stored.endswith(b"Subject: hi\r\nX-Tenant: acme\r\n\r\nHello Bob\r\n")


def test_rewrite_response_changes_replies_but_not_the_250_after_data(smtp_server, alice, caplog):
    @on("smtp_server_rewrite_response")
    def rewrite(status, response, command, conn_meta):
        if command == "RCPT":
            return None, "2.1.5 Recipient fine, thanks"
        if status == 220 and command is None:
            return None, "mx.test.invalid ESMTP ready"
        if command == "DATA" and status == 250:
            return 550, "5.0.0 no!"  # may not: the message is stored
        return None

    reply, client = run_session(smtp_server, "DATA")
    assert client.greeting == [b"220 mx.test.invalid ESMTP ready"]
    client.close()
    assert reply[0].startswith(b"250 2.0.0 OK queued as "), reply  # kept whole
    assert Message.objects.count() == 1
    assert "may not turn 250 (to DATA) into 550" in caplog.text
    client = RawClient(smtp_server)
    client.starttls()
    client.login(ALICE, PASSWORD)
    assert client.command(f"MAIL FROM:<{ALICE}>".encode())[0].startswith(b"250")
    assert client.command(f"RCPT TO:<{BOB}>".encode()) == [b"250 2.1.5 Recipient fine, thanks"]
    client.close()


def test_a_project_replaces_the_sender_policy_for_logins_that_are_not_addresses(
    smtp_server, settings, secret_watch
):
    """An LDAP-style directory: logins are user ids, senders are checked by its own rule."""
    directory = {"uid=jdoe": ("ldap secret", ["john.doe@corp.example"])}
    secret_watch.add("ldap secret")

    @on("smtp_server_auth_plain")
    def ldap_bind(authz, authc, password, conn_meta):
        entry = directory.get(authc)
        if entry is None:
            return None  # not ours: next handler (none: 454)
        conn_meta.set_meta("mail_addresses", entry[1])
        return password == entry[0]

    @on("smtp_server_mail_from")
    def own_addresses_only(sender, conn_meta):
        if sender.address not in conn_meta.get_meta("mail_addresses"):
            reject(553, "5.7.1 not one of your addresses")

    # The built-in sender policy would refuse: the login is no address.
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", "uid=jdoe", "ldap secret"))[0] == 235
        assert client.docmd("MAIL FROM:<john.doe@corp.example>")[0] == 553
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "BUILTIN_HOOKS": {"smtp_server_mail_from": ["kumosubmit.policy.limits.mail_from"]},
    }
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", "uid=jdoe", "ldap secret"))[0] == 235
        assert client.docmd("MAIL FROM:<someone.else@corp.example>") == (
            553,
            b"5.7.1 not one of your addresses",
        )
        client.rset()
        client.sendmail("john.doe@corp.example", [BOB], BODY)
        client.sendmail("john.doe@corp.example", ["x@example.org"], BODY)
    assert [m.authn_id for m in Message.objects.all()] == ["uid=jdoe", "uid=jdoe"]


def test_what_the_messages_need_is_read_at_auth(smtp_server, alice, settings):
    """The sender policy and the sending limits are read while AUTH waits on argon2, so no
    message of the session waits for the database on its way; a new session reads them
    anew."""
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "SEND_LIMITS": None}
    with quitting(smtp_server.starttls()) as client:
        login(client)
        # Changed after this session's AUTH: it goes on with what it read then.
        AllowedSender.objects.create(login=alice, pattern="@example.net")
        alice.message_limits = ["1/hour"]
        alice.save()
        assert client.docmd("MAIL FROM:<carol@example.net>")[0] == 553
        client.sendmail(ALICE, [BOB], BODY)
        client.sendmail(ALICE, [BOB], BODY)
    with quitting(smtp_server.starttls()) as client:
        login(client)
        client.sendmail("carol@example.net", [BOB], BODY)
        assert client.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 451


def test_what_was_read_at_a_refused_auth_is_not_used_after_another(smtp_server, alice, make_login):
    """A wrapper may refuse an AUTH after the login check said yes; what was read for that
    login must not serve the identity that authenticates next."""
    make_login(BOB, "bob's password")

    async def refuse_the_first_success(authz, authc, password, conn_meta):
        verdict = yield
        if verdict is True:
            reject(535, "5.7.8 refused after all")

    refusing = [
        refuse_the_first_success,
        "kumosubmit.policy.senders.auth_plain",
        "kumosubmit.policy.sendlimits.auth_plain",
    ]
    with quitting(smtp_server.starttls()) as client:
        with hooks.override("smtp_server_auth_plain", builtins=refusing):
            assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, PASSWORD))[0] == 535
        # Bob gets in through a chain that reads nothing at AUTH (as an OAuth session).
        with hooks.override("smtp_server_auth_plain", builtins=[]):
            blob = plain_blob("", BOB, "bob's password")
            assert client.docmd("AUTH", "PLAIN " + blob)[0] == 235
        assert client.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 553
        assert client.docmd("MAIL", f"FROM:<{BOB}>")[0] == 250


def test_the_builtin_login_check_stays_behind_a_project_handler_when_listed(smtp_server, alice):
    @on("smtp_server_auth_plain")
    def only_service_accounts(authz, authc, password, conn_meta):
        return True if (authc, password) == ("svc", "service pw") else None

    on("smtp_server_auth_plain")(authenticate)
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", "svc", "service pw"))[0] == 235
    with quitting(smtp_server.starttls()) as client:
        login(client)  # the database login, through the built-in check listed after it
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, "wrong"))[0] == 535


def test_override_and_reset_restore_the_chain():
    builtin = hooks.get_handlers("smtp_server_mail_from")

    def mine(sender, conn_meta):
        pass

    with hooks.override("smtp_server_mail_from", mine, builtins=[]):
        assert hooks.get_handlers("smtp_server_mail_from") == [mine]
    assert hooks.get_handlers("smtp_server_mail_from") == builtin
    on("smtp_server_mail_from")(mine)
    on("smtp_server_mail_from")(mine)  # once only
    assert hooks.get_handlers("smtp_server_mail_from") == [*builtin, mine]
    hooks.reset()
    assert hooks.get_handlers("smtp_server_mail_from") == builtin
    with pytest.raises(ValueError, match="4xx or 5xx"):
        reject(250, "fine")


def test_rewrite_response_cannot_keep_a_closing_connection_open(smtp_server, alice, caplog):
    @on("smtp_server_mail_from")
    def go_away(sender, conn_meta):
        reject(421, "4.7.0 go away")

    @on("smtp_server_rewrite_response")
    def soften(status, response, command, conn_meta):
        if status == 421:
            return 550, "5.7.1 just this one"
        if command == "RCPT" and status == 501:
            return 250, "2.1.5 fine"  # a refused recipient may not look accepted
        return None

    reply, client = run_session(smtp_server, "MAIL")
    assert reply == [b"421 4.7.0 go away"] and client.closed()
    client.close()
    hooks.reset("smtp_server_mail_from")
    client = RawClient(smtp_server)
    client.starttls()
    client.login(ALICE, PASSWORD)
    assert client.command(f"MAIL FROM:<{ALICE}>".encode())[0].startswith(b"250")
    assert client.command(b"RCPT TO:<not an address>")[0].startswith(b"501 5.1.3")
    client.close()
    assert "may not turn 421 (to MAIL) into 550" in caplog.text


def test_a_wrapper_alone_keeps_the_builtin_login_check(smtp_server, alice):
    outcomes = []

    @on("smtp_server_auth_plain")
    async def observe(authz, authc, password, conn_meta):
        outcomes.append((yield))

    with quitting(smtp_server.starttls()) as client:
        login(client)
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, "wrong"))[0] == 535
    assert outcomes == [True, False]
    with pytest.raises(ValueError, match="not wrappers"):

        @on("smtp_server_rewrite_response")
        async def wrong_kind(status, response, command, conn_meta):
            yield


def test_delay_reply_holds_the_reply_of_the_event_that_asked(smtp_server, alice):
    @on("smtp_server_rcpt_to")
    def tarpit(recipient, conn_meta):
        if recipient.domain == "slow.example":
            hooks.delay_reply(conn_meta, 0.5)

    client = RawClient(smtp_server)
    client.starttls()
    client.login(ALICE, PASSWORD)
    assert client.command(f"MAIL FROM:<{ALICE}>".encode())[0].startswith(b"250")
    started = time.monotonic()
    assert client.command(b"RCPT TO:<x@slow.example>")[0].startswith(b"250")
    assert time.monotonic() - started >= 0.45
    started = time.monotonic()
    assert client.command(b"RCPT TO:<y@fast.example>")[0].startswith(b"250")
    assert client.command(b"NOOP")[0].startswith(b"250")
    assert time.monotonic() - started < 0.4
    client.close()


def test_conn_meta_set_while_receiving_reaches_the_message(smtp_server, alice):
    @on("smtp_server_message_received")
    def classify(message, conn_meta):
        conn_meta.set_meta("last_subject", message.get_first_named_header("Subject"))
        message.set_meta("tenant", "acme")

    with quitting(smtp_server.starttls()) as client:
        login(client)
        client.sendmail(ALICE, [BOB], BODY)
    stored = Message.objects.get()
    assert stored.meta["last_subject"] == "hi" and stored.meta["tenant"] == "acme"
    smtp_server.settle()
    record = ConnectionRecord.objects.get()
    assert record.meta["last_subject"] == "hi" and "tenant" not in record.meta
