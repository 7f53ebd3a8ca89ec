"""The sender policy: ``MAIL FROM`` (and, with ``CHECK_HEADER_FROM``, the ``From:`` header)
must be an address the login may send as (credentials/senders.py says which)."""

from __future__ import annotations

from collections.abc import Awaitable

from kumosubmit.conf import app_settings
from kumosubmit.credentials.senders import SenderPolicy, load_policy
from kumosubmit.db import run_db
from kumosubmit.hooks import EnvelopeAddress, Message, reject
from kumosubmit.meta import ConnectionMeta

SENDER_NOT_ALLOWED = (553, "5.7.1 Sender address not allowed for this login")
HEADER_FROM_NOT_ALLOWED = (550, "5.7.1 From: header address not allowed for this login")


async def policy_of(conn_meta: ConnectionMeta) -> SenderPolicy:
    """The session's sender policy, read at its first use and kept for the connection."""
    policy: SenderPolicy | None = conn_meta.cache.get("sender_policy")
    if policy is None:
        policy = await run_db(load_policy, conn_meta["authz_id"], conn_meta["authn_id"])
        conn_meta.cache["sender_policy"] = policy
    return policy


def mail_from(sender: EnvelopeAddress, conn_meta: ConnectionMeta) -> Awaitable[None] | None:
    """Plain, but returns an awaitable when the policy has still to be read (once per
    session): every later message costs no trip through the event loop's timers."""
    if not app_settings.CHECK_SENDER:
        return None
    policy: SenderPolicy | None = conn_meta.cache.get("sender_policy")
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
