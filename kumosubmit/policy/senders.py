"""The sender policy: ``MAIL FROM`` (and, with ``CHECK_HEADER_FROM``, the ``From:`` header)
must be an address the login may send as (credentials/senders.py says which)."""

from __future__ import annotations

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


async def mail_from(sender: EnvelopeAddress, conn_meta: ConnectionMeta) -> None:
    if app_settings.CHECK_SENDER and not (await policy_of(conn_meta)).permits(sender.address):
        reject(*SENDER_NOT_ALLOWED)


async def data(message: Message, conn_meta: ConnectionMeta) -> None:
    """The message must have From: addresses, and the session may send as each of them."""
    if not app_settings.CHECK_HEADER_FROM:
        return
    addresses = message.from_addresses()
    policy = await policy_of(conn_meta)
    if not addresses or not all(address and policy.permits(address) for address in addresses):
        reject(*HEADER_FROM_NOT_ALLOWED)
