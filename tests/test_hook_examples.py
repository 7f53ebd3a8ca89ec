"""The examples of docs/hooks.md (tests/hook_examples.py), each through real SMTP sessions,
and the check that the document quotes them verbatim."""

from __future__ import annotations

import base64
import email
import logging
import re
import smtplib
import socket
import textwrap
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kumosubmit import hooks
from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.service import authenticate
from kumosubmit.hooks import Reject
from kumosubmit.meta import ConnectionMeta
from kumosubmit.policy import limits, sendlimits
from kumosubmit.spool.models import Message
from tests import hook_examples
from tests.live import RawClient, plain_blob, quitting

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "hooks.md"
ALICE = "alice@example.com"
PASSWORD = "correct horse battery"
BOB = "bob@example.org"
BODY = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHello Bob\r\n"


@pytest.fixture
def alice(make_login):
    return make_login(ALICE, PASSWORD)


def login(client: smtplib.SMTP, authc: str = ALICE, password: str = PASSWORD) -> int:
    return client.docmd("AUTH", "PLAIN " + plain_blob("", authc, password))[0]


# -- the document and the module agree -----------------------------------------------------

MARKED_BLOCK = re.compile(r"<!-- from (\S+) -->\n```python\n(.*?)```", re.DOTALL)
SECTION = re.compile(r"^# -- (\S[^\n]*?) --\n(.*?)(?=^# -- )", re.DOTALL | re.MULTILINE)


def test_every_block_marked_as_quoted_is_in_its_file_verbatim():
    blocks = MARKED_BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 10
    for path, code in blocks:
        text = (ROOT / path).read_text()
        # A block may quote lines of a function body, without their indentation.
        assert code in text or textwrap.indent(code, "    ") in text, (
            f"docs/hooks.md quotes {path} wrongly:\n{code}"
        )


def test_every_example_is_quoted_in_the_document():
    quoted = {code.strip() for path, code in MARKED_BLOCK.findall(DOC.read_text())}
    sections = SECTION.findall(Path(hook_examples.__file__).read_text())
    assert len(sections) >= 12
    for name, code in sections:
        assert code.strip() in quoted, f"the {name!r} example is not quoted in docs/hooks.md"


RUN_BLOCK = re.compile(
    r"<!-- run by tests/test_hook_examples.py -->\n```python\n(.*?)```", re.DOTALL
)


def test_every_python_block_of_the_document_is_tested():
    text = DOC.read_text()
    marked = len(MARKED_BLOCK.findall(text)) + len(RUN_BLOCK.findall(text))
    assert text.count("```python") == marked


def doc_snippet(containing: str) -> str:
    """The block of docs/hooks.md run by this module that contains ``containing``.

    The snippets are run with ``exec`` (S102): they are this repository's own text.
    """
    (code,) = [code for code in RUN_BLOCK.findall(DOC.read_text()) if containing in code]
    return code


def test_the_first_example_of_the_document(smtp_server, make_login):
    make_login("mallory@bad.example", "mallorys password")
    exec(doc_snippet("@on("), {})  # noqa: S102 (registers its handler, as an import would)
    with quitting(smtp_server.starttls()) as client:
        assert login(client, "mallory@bad.example", "mallorys password") == 235
        assert client.docmd("MAIL FROM:<mallory@bad.example>") == (
            550,
            b"5.7.1 not from that domain",
        )


def test_the_reject_snippet():
    with pytest.raises(Reject) as refusal:
        exec(doc_snippet("import reject\nreject(550"), {})  # noqa: S102
    assert refusal.value.reply == "550 5.7.1 not from that domain"
    assert Reject(450, "mailbox busy").reply == "450 4.0.0 mailbox busy"


def test_the_conn_meta_snippet():
    conn_meta = ConnectionMeta(peer=("192.0.2.7", 4321), local=("127.0.0.1", 587), listener="x")
    exec(doc_snippet("conn_meta.set_meta"), {"conn_meta": conn_meta})  # noqa: S102
    assert conn_meta.get_meta("received_from") == "192.0.2.7:4321"
    assert conn_meta["tenant"] == {"name": "acme", "tier": 2}
    with pytest.raises(TypeError, match="meta value for 'when' is not JSON"):
        conn_meta.set_meta("when", object())


def test_the_builtin_hooks_snippet(settings):
    namespace: dict = {}
    exec(doc_snippet('"BUILTIN_HOOKS"'), namespace)  # noqa: S102
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, **namespace["KUMOSUBMIT"]}
    assert hooks.get_handlers("smtp_server_mail_from") == [limits.mail_from, sendlimits.mail_from]
    # No penalties; the login check stays, being no built-in of the list.
    assert hooks.get_handlers("smtp_server_auth_plain") == [authenticate]
    assert hooks.get_handlers("smtp_server_rcpt_to") == [limits.rcpt_to, sendlimits.rcpt_to]


# -- a deny-listed peer at connection --------------------------------------------------------


def greeting_through_proxy(server, source: str) -> bytes:
    """The first reply to a connection that a balancer says came from ``source``."""
    with socket.create_connection((server.host, server.proxy_port), timeout=10) as sock:
        sock.sendall(f"PROXY TCP4 {source} 127.0.0.1 4321 587\r\n".encode())
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def test_a_deny_listed_peer_is_refused_before_the_greeting(smtp_server):
    hooks.on("smtp_server_connection_accepted")(hook_examples.deny_listed_peer)
    # The real client, from the PROXY header: 421, and the connection is closed.
    assert greeting_through_proxy(smtp_server, "192.0.2.7") == (
        b"421 4.0.0 service not accepted from 192.0.2.7:4321\r\n"
    )
    client = RawClient(smtp_server)  # 127.0.0.1 is not listed
    assert client.greeting[0].startswith(b"220 ")
    client.close()
    smtp_server.settle()
    refused = ConnectionRecord.objects.get(peer_address="192.0.2.7")
    assert refused.meta["refused"].startswith("421 4.0.0")


# -- a sender domain refused at MAIL FROM ----------------------------------------------------


def test_a_sender_domain_is_refused_at_mail_from(smtp_server, alice, make_login):
    make_login("mallory@bad.example", "mallorys password")
    hooks.on("smtp_server_mail_from")(hook_examples.refuse_sender_domain)
    with quitting(smtp_server.starttls()) as client:
        # The built-in sender policy lets her send as herself; the example does not.
        assert login(client, "mallory@bad.example", "mallorys password") == 235
        assert client.docmd("MAIL FROM:<mallory@bad.example>") == (
            550,
            b"5.7.1 not from that domain",
        )
    with quitting(smtp_server.starttls()) as client:
        assert login(client) == 235
        client.sendmail(ALICE, [BOB], BODY)
    assert Message.objects.get().mail_from == ALICE


# -- a recipient refused at RCPT TO ----------------------------------------------------------


def test_a_recipient_domain_is_refused_at_rcpt_to(smtp_server, alice):
    hooks.on("smtp_server_rcpt_to")(hook_examples.refuse_recipient_domain)
    with quitting(smtp_server.starttls()) as client:
        assert login(client) == 235
        refused = client.sendmail(ALICE, [BOB, "carl@Bad.Example"], BODY)
    assert refused == {"carl@Bad.Example": (550, b"5.7.1 no mail to Bad.Example from here")}
    assert Message.objects.get().rcpt_tos == [BOB]


# -- DKIM signing at message_received --------------------------------------------------------


@pytest.fixture
def dkim_record(tmp_path, monkeypatch) -> bytes:
    """A new RSA key for example.com, selector sel2026: the TXT record that publishes it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "example.com.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    monkeypatch.setitem(hook_examples.DKIM_KEYS, "example.com", ("sel2026", str(key_file)))
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_message_received_signs_dkim_and_the_stored_message_verifies(
    smtp_server, alice, dkim_record
):
    asked = []

    def dns(name, timeout=5):
        asked.append(name)
        return dkim_record if name == b"sel2026._domainkey.example.com." else None

    hooks.on("smtp_server_message_received")(hook_examples.dkim_sign)
    with quitting(smtp_server.starttls()) as client:
        assert login(client) == 235
        client.sendmail(ALICE, [BOB], BODY)
        # A From: of a domain without a key goes out unsigned.
        client.sendmail(ALICE, [BOB], BODY.replace(b"alice@example.com>", b"a@other.example>"))
    signed, unsigned = (bytes(m.content) for m in Message.objects.order_by("received_at", "pk"))
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert b"\r\nReceived: from client.test" in signed and signed.endswith(BODY)
    assert dkim.verify(signed, dnsfunc=dns)
    assert asked == [b"sel2026._domainkey.example.com."]
    signature = email.message_from_bytes(signed)["DKIM-Signature"]
    assert " d=example.com;" in signature and " s=sel2026;" in signature
    # A real verification: a changed body or header no longer passes.
    assert not dkim.verify(signed.replace(b"Hello Bob", b"Hello Eve"), dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Subject: hi", b"Subject: ho"), dnsfunc=dns)
    assert not unsigned.startswith(b"DKIM-Signature")
    assert b"\r\nDKIM-Signature" not in unsigned


# -- auth_plain over a dict ------------------------------------------------------------------


def test_auth_over_a_dict_alone_decides_for_its_logins_only(smtp_server, alice, secret_watch):
    secret_watch.add("tiger")
    hooks.on("smtp_server_auth_plain")(hook_examples.auth_from_dict)
    with quitting(smtp_server.starttls()) as client:
        assert login(client, "daniel", "wrong") == 535
        assert login(client, "daniel", "tiger") == 235
    with quitting(smtp_server.starttls()) as client:
        # daniel acting as someone else: refused.
        reply = client.docmd("AUTH", "PLAIN " + plain_blob("root", "daniel", "tiger"))
        assert reply[0] == 535
    with quitting(smtp_server.starttls()) as client:
        # Not in the dict and no handler after it: no decision, 454, never an accept.
        assert login(client) == 454


def test_auth_over_a_dict_then_the_database_with_its_own_sender_policy(
    smtp_server, alice, settings, secret_watch
):
    secret_watch.add("tiger")
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, **hook_examples.KUMOSUBMIT}
    with quitting(smtp_server.starttls()) as client:
        assert login(client, "daniel", "tiger") == 235
        assert client.docmd("MAIL FROM:<root@example.com>") == (
            553,
            b"5.7.1 Sender address not allowed for this login",
        )
        client.rset()
        client.sendmail("daniel@example.com", [BOB], BODY)
    with quitting(smtp_server.starttls()) as client:
        assert login(client, "eve", "tiger") == 535  # unknown to both
        assert login(client, ALICE, "tiger") == 535  # the database's answer
        assert login(client) == 235  # the database login
        assert client.docmd(f"MAIL FROM:<{BOB}>")[0] == 553  # the built-in rule, kept
        client.rset()
        client.sendmail(ALICE, [BOB], BODY)
    assert [(m.authn_id, m.mail_from) for m in Message.objects.order_by("received_at", "pk")] == [
        ("daniel", "daniel@example.com"),
        (ALICE, ALICE),
    ]


# -- the other events ------------------------------------------------------------------------


def test_ehlo_advertises_a_new_list_and_still_no_auth_before_tls(smtp_server):
    hooks.on("smtp_server_ehlo")(hook_examples.no_help)
    client = RawClient(smtp_server)
    plain = client.command(b"EHLO client.test")
    assert b"250-STARTTLS" in plain
    assert not any(b"HELP" in line or b"AUTH" in line for line in plain)
    client.starttls()
    on_tls = client.command(b"EHLO client.test")
    assert b"250-AUTH LOGIN OAUTHBEARER PLAIN XOAUTH2" in on_tls
    assert not any(b"HELP" in line for line in on_tls)
    client.command(b"QUIT")
    client.close()


def test_data_expands_an_alias_into_the_stored_envelope(smtp_server, alice):
    hooks.on("smtp_server_data")(hook_examples.expand_aliases)
    with quitting(smtp_server.starttls()) as client:
        assert login(client) == 235
        client.sendmail(ALICE, ["Team@example.org", "carol@example.net"], BODY)
    stored = Message.objects.get()
    assert stored.rcpt_tos == ["ann@example.org", "bob@example.org", "carol@example.net"]


def test_conn_meta_and_message_meta_reach_the_stored_message(smtp_server, alice):
    hooks.on("smtp_server_connection_accepted")(hook_examples.tenant_by_listener)
    hooks.on("smtp_server_message_received")(hook_examples.queue_by_tenant)
    with quitting(smtp_server.starttls()) as client:
        assert login(client) == 235
        client.sendmail(ALICE, [BOB], BODY)
    with quitting(smtp_server.implicit()) as client:
        assert login(client) == 235
        client.sendmail(ALICE, [BOB], BODY.replace(b"\r\n\r\n", b"\r\nX-Tenant: app\r\n\r\n"))
    bulk, transactional = Message.objects.order_by("received_at", "pk")
    assert (bulk.meta["tenant"], bulk.meta["queue"]) == ("bulk", "bulk-outbound")
    assert bytes(bulk.content).endswith(b"Subject: hi\r\nX-Tenant: bulk\r\n\r\nHello Bob\r\n")
    assert transactional.meta["queue"] == "transactional-outbound"
    assert email.message_from_bytes(bytes(transactional.content)).get_all("X-Tenant") == ["app"]
    smtp_server.settle()
    records = ConnectionRecord.objects.all()
    assert sorted(r.meta["tenant"] for r in records) == ["bulk", "transactional"]
    assert all("queue" not in r.meta for r in records)  # the message's own, not the connection's


def test_rewrite_response_changes_the_greeting(smtp_server):
    hooks.on("smtp_server_rewrite_response")(hook_examples.brand_greeting)
    client = RawClient(smtp_server)
    assert client.greeting == [b"220 mail.example.com ESMTP ready"]
    assert client.command(b"NOOP") == [b"250 2.0.0 OK"]
    client.close()


def test_a_wrapper_learns_the_verdict(smtp_server, alice, caplog):
    caplog.set_level(logging.INFO, logger="myproject.auth")
    # A wrapper only observes: the database check still answers.
    hooks.on("smtp_server_auth_plain")(hook_examples.log_auth_outcome)
    with quitting(smtp_server.starttls()) as client:
        assert login(client, ALICE, "wrong password") == 535
        assert login(client) == 235
    messages = [r.getMessage() for r in caplog.records if r.name == "myproject.auth"]
    assert [m.rsplit(" in ", 1)[0] for m in messages] == [
        f"AUTH for {ALICE} refused",
        f"AUTH for {ALICE} accepted",
    ]


def test_a_rule_in_place_of_the_builtin_sender_policy(smtp_server, alice):
    with hooks.override(
        "smtp_server_mail_from",
        hook_examples.refuse_sender_domain,
        builtins=["kumosubmit.policy.limits.mail_from"],
    ):
        with quitting(smtp_server.starttls()) as client:
            assert login(client) == 235
            client.sendmail(BOB, [BOB], BODY)  # no sender policy: any address but bad.example
    assert Message.objects.get().mail_from == BOB


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def test_service_tokens_then_the_configured_validator(smtp_server, make_login, settings):
    from django.contrib.auth.models import User

    from kumosubmit.oauth.tokens import create_smtp_token

    make_login("backup@example.com", "own password of backup")
    alice = make_login(ALICE, PASSWORD)
    alice.owner = User.objects.create_user("alice")
    alice.save(update_fields=["owner"])
    _row, toolkit_token = create_smtp_token(alice, "t", None)
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, **hook_examples.KUMOSUBMIT_TOKENS}
    with quitting(smtp_server.starttls()) as client:
        reply = client.docmd("AUTH", "XOAUTH2 " + xoauth2("", "svc-backup-0123456789"))
        assert reply[0] == 235
        client.sendmail("backup@example.com", [BOB], BODY)
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "XOAUTH2 " + xoauth2(ALICE, toolkit_token))[0] == 235
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "XOAUTH2 " + xoauth2(ALICE, "svc-other-99"))[0] == 334
        assert client.docmd("")[0] == 535
    assert Message.objects.get().authn_id == "backup@example.com"
