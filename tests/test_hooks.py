"""The smtp_server_auth_plain hook, replaced by a project's own handler, over real sessions."""

from __future__ import annotations

import asyncio

import pytest

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.hooks import get_handler, on
from kumosubmit.spool.models import Message
from tests import hook_handlers
from tests.live import b64, plain_blob, quitting

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"


def test_unknown_event_is_refused():
    with pytest.raises(ValueError, match="unknown hook event"):
        on("smtp_server_auth_cram")


def test_registered_async_hook_replaces_the_builtin(smtp_server, make_login, secret_watch):
    # Alice exists with this password, but the project's hook decides: it refuses her.
    make_login(ALICE, PASSWORD)
    seen = []

    @on("smtp_server_auth_plain")
    async def only_dave(authz, authc, password, conn_meta):
        seen.append((authz, authc, dict(conn_meta)))
        await asyncio.sleep(0)
        return authc == "dave@example.com" and password == "daves password"

    secret_watch.add("daves password")
    assert get_handler("smtp_server_auth_plain") is only_dave
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, PASSWORD))[0] == 535
        reply = client.docmd(
            "AUTH", "PLAIN " + plain_blob("", "dave@example.com", "daves password")
        )
        assert reply[0] == 235
        client.sendmail("dave@example.com", ["x@example.org"], b"Subject: t\r\n\r\nbody\r\n")
    # An empty authz reaches the hook as authc.
    assert [(authz, authc) for authz, authc, _ in seen] == [
        (ALICE, ALICE),
        ("dave@example.com", "dave@example.com"),
    ]
    meta = seen[0][2]
    assert meta["peer_address"] == "127.0.0.1"
    assert meta["local_port"] == smtp_server.starttls_port
    assert meta["tls_version"].startswith("TLSv1.")
    assert meta["ehlo_name"] == "client.test"
    assert len(meta["conn_id"]) == 32
    assert "password" not in str(meta)
    message = Message.objects.get()
    assert (message.authz_id, message.authn_id) == ("dave@example.com", "dave@example.com")


def test_sync_hook_with_authz(smtp_server, secret_watch):
    @on("smtp_server_auth_plain")
    def shared_mailbox(authz, authc, password, conn_meta):
        return (authz, authc, password) == ("sales@example.com", "erin", "erins password")

    secret_watch.add("erins password")
    with quitting(smtp_server.starttls()) as client:
        assert (
            client.docmd(
                "AUTH", "PLAIN " + plain_blob("sales@example.com", "erin", "erins password")
            )[0]
            == 235
        )
        client.sendmail("sales@example.com", ["x@example.org"], b"Subject: t\r\n\r\nbody\r\n")
    message = Message.objects.get()
    assert message.meta["authz_id"] == "sales@example.com"
    assert message.meta["authn_id"] == "erin"


def test_conn_meta_is_one_object_per_connection_and_hooks_may_add_keys(smtp_server, secret_watch):
    metas = []

    @on("smtp_server_auth_plain")
    def count_tries(authz, authc, password, conn_meta):
        metas.append(conn_meta)
        conn_meta["tries"] = conn_meta.get("tries", 0) + 1
        return password == "second time lucky"

    secret_watch.add("first guess", "second time lucky")
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", "frank", "first guess"))[0] == 535
        assert (
            client.docmd("AUTH", "PLAIN " + plain_blob("", "frank", "second time lucky"))[0] == 235
        )
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", "frank", "first guess"))[0] == 535
    assert metas[0] is metas[1]
    assert metas[2] is not metas[0]
    smtp_server.settle()
    records = {r.meta["conn_id"]: r for r in ConnectionRecord.objects.all()}
    assert records[metas[0]["conn_id"]].meta["tries"] == 2
    assert records[metas[2]["conn_id"]].meta["tries"] == 1
    assert [a["outcome"] for a in records[metas[0]["conn_id"]].meta["auth_attempts"]] == [
        "failure",
        "success",
    ]


def test_auth_login_goes_through_the_same_hook(smtp_server, secret_watch):
    calls = []

    @on("smtp_server_auth_plain")
    def check(authz, authc, password, conn_meta):
        calls.append((authz, authc))
        return password == "grace password"

    secret_watch.add("grace password")
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "LOGIN " + b64("grace"))[0] == 334
        assert client.docmd(b64("grace password"))[0] == 235
    assert calls == [("grace", "grace")]


def test_hook_exception_gets_454_and_never_leaks_the_password(smtp_server, secret_watch, caplog):
    @on("smtp_server_auth_plain")
    def broken(authz, authc, password, conn_meta):
        raise RuntimeError(f"database exploded while checking {password}")

    secret_watch.add("a password to hide")
    with quitting(smtp_server.starttls()) as client:
        code, text = client.docmd("AUTH", "PLAIN " + plain_blob("", "heidi", "a password to hide"))
        assert (code, text) == (454, b"4.7.0 Temporary authentication failure")
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 530
    assert "database exploded while checking ***" in caplog.text
    smtp_server.settle()
    assert ConnectionRecord.objects.get().auth_outcome == "error"


@pytest.mark.parametrize("verdict", [None, 1, "yes", ["True"]])
def test_hook_returning_a_non_bool_is_an_error_not_an_accept(smtp_server, verdict):
    @on("smtp_server_auth_plain")
    def sloppy(authz, authc, password, conn_meta):
        return verdict

    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", "ivan", "pw"))[0] == 454


def test_hook_named_in_settings(smtp_server, settings, secret_watch):
    settings.KUMOSUBMIT = {
        **settings.KUMOSUBMIT,
        "HOOKS": {"smtp_server_auth_plain": "tests.hook_handlers.allow_carol"},
    }
    hook_handlers.CALLS.clear()
    secret_watch.add("carols password")
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", "carol", "carols password"))[0] == 235
    assert hook_handlers.CALLS == [("carol", "carol")]


def test_builtin_is_used_again_after_reset(smtp_server, make_login, secret_watch):
    from kumosubmit.hooks import reset

    @on("smtp_server_auth_plain")
    def nobody(authz, authc, password, conn_meta):
        return False

    reset("smtp_server_auth_plain")
    make_login(ALICE, PASSWORD)
    with quitting(smtp_server.starttls()) as client:
        assert client.docmd("AUTH", "PLAIN " + plain_blob("", ALICE, PASSWORD))[0] == 235
