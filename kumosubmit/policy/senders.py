"""The sender policy: ``MAIL FROM`` (and, with ``CHECK_HEADER_FROM``, the ``From:`` header)
must be an address the login may send as (credentials/senders.py says which).

The policy is read once per session: by the ``smtp_server_auth_plain`` wrapper once the
login is in (a step that waits on argon2 anyway), so that no message waits for the
database on its way; else (a wrapper dropped, an OAuth session, a failed read) at the
first MAIL FROM.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable
from typing import Any

from kumosubmit.conf import app_settings
from kumosubmit.credentials.senders import SenderPolicy, load_policy
from kumosubmit.db import run_db
from kumosubmit.hooks import EnvelopeAddress, Message, reject
from kumosubmit.meta import ConnectionMeta

log = logging.getLogger("kumosubmit.smtp")

#: conn_meta.cache keys: the session's policy; one read at AUTH, with whom it is for.
POLICY = "sender_policy"
READ_AT_AUTH = "sender_policy_read_at_auth"

SENDER_NOT_ALLOWED = (553, "5.7.1 Sender address not allowed for this login")
HEADER_FROM_NOT_ALLOWED = (550, "5.7.1 From: header address not allowed for this login")


def _checked() -> bool:
    return bool(app_settings.CHECK_SENDER or app_settings.CHECK_HEADER_FROM)


async def auth_plain(
    authz: str, authc: str, password: str, conn_meta: ConnectionMeta
) -> AsyncGenerator[None, Any]:
    """The wrapper of ``smtp_server_auth_plain``: once the login is in, read its policy."""
    verdict = yield
    if verdict is not True or not _checked():
        return
    identity = (authz or authc, authc)
    try:
        conn_meta.cache[READ_AT_AUTH] = (identity, await run_db(load_policy, *identity))
    except Exception:  # read again at MAIL FROM, where a failure has its own reply
        log.exception("conn %s: could not read the sender policy at AUTH", conn_meta["conn_id"])


def _known(conn_meta: ConnectionMeta) -> SenderPolicy | None:
    """The session's policy if it has been read: at an earlier MAIL FROM, or at AUTH for
    the identity the session has (a wrapper after this one may have refused that AUTH,
    and the client authenticated again as someone else)."""
    policy: SenderPolicy | None = conn_meta.cache.get(POLICY)
    if policy is None:
        read = conn_meta.cache.pop(READ_AT_AUTH, None)
        if read is not None and read[0] == (conn_meta["authz_id"], conn_meta["authn_id"]):
            policy = conn_meta.cache[POLICY] = read[1]
    return policy


async def policy_of(conn_meta: ConnectionMeta) -> SenderPolicy:
    """The session's sender policy, read at its first use and kept for the connection."""
    policy = _known(conn_meta)
    if policy is None:
        policy = await run_db(load_policy, conn_meta["authz_id"], conn_meta["authn_id"])
        conn_meta.cache[POLICY] = policy
    return policy


def mail_from(sender: EnvelopeAddress, conn_meta: ConnectionMeta) -> Awaitable[None] | None:
    """Plain, but returns an awaitable when the policy has still to be read (once per
    session): every later message costs no trip through the event loop's timers."""
    if not app_settings.CHECK_SENDER:
        return None
    policy = _known(conn_meta)
    if policy is None:
        return check_sender(sender, conn_meta)
    if not policy.permits(sender.address):
        reject(*SENDER_NOT_ALLOWED)
    return None


async def check_sender(sender: EnvelopeAddress, conn_meta: ConnectionMeta) -> None:
    """The rule itself, for a project handler that keeps it for some sessions."""
    if not (await policy_of(conn_meta)).permits(sender.address):
        reject(*SENDER_NOT_ALLOWED)


def data(message: Message, conn_meta: ConnectionMeta) -> Awaitable[None] | None:
    """With CHECK_HEADER_FROM: the message must have From: addresses, and the session may
    send as each of them."""
    return _check_header_from(message, conn_meta) if app_settings.CHECK_HEADER_FROM else None


async def _check_header_from(message: Message, conn_meta: ConnectionMeta) -> None:
    addresses = message.from_addresses()
    policy = await policy_of(conn_meta)
    if not addresses or not all(address and policy.permits(address) for address in addresses):
        reject(*HEADER_FROM_NOT_ALLOWED)
