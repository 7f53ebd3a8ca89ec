"""Decoy logins (honeytokens): no one has a reason to try one, so whoever does is an attacker.

A wrapper around ``smtp_server_auth_plain``, after the failed-AUTH penalties (an address
or login blocked already is refused there, with no look-up here) and before the lanes:
an AUTH naming a login marked as a decoy (``SmtpLogin.is_decoy``) blocks the client's
address at once on every host sharing the database (the address block of
credentials/throttle.py), before any password is checked, and alerts the site's admins
(``notices.adecoy_used``). The client gets what a wrong password gets, ``535 5.7.8``
after about as long as a verification takes here, counted and delayed by the penalties
as a wrong password is, so it cannot tell a decoy from a real login; its next AUTH meets
the block.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from kumosubmit import notices
from kumosubmit.credentials import hashing, throttle
from kumosubmit.credentials.models import SmtpLogin, normalize_username
from kumosubmit.db import run_db
from kumosubmit.hooks import Reject
from kumosubmit.hooks.dryrun import is_dry_run
from kumosubmit.meta import AUTH_FAILURE, ConnectionMeta

log = logging.getLogger("kumosubmit.smtp")

#: What a wrong password gets (kumosubmit.hooks.events.AUTH_INVALID).
WRONG_PASSWORD = (535, "5.7.8 Authentication credentials invalid")


def is_decoy(authc: str) -> bool:
    """Whether ``authc`` names a decoy login (one indexed query)."""
    return SmtpLogin.objects.filter(username=normalize_username(authc), is_decoy=True).exists()


def _tripped(authc: str, address: str | None) -> throttle.Block | None:
    return throttle.block_address(throttle.policy(), address)


async def auth_plain(
    authz: str, authc: str, password: str, conn_meta: ConnectionMeta
) -> AsyncGenerator[None, Any]:
    if authc and await run_db(is_decoy, authc):
        address = conn_meta["peer_address"]
        conn_meta["decoy"] = True  # in the audit row
        log.warning("conn %s: decoy login %r tried from %s", conn_meta["conn_id"], authc, address)
        if not is_dry_run(conn_meta):
            block = await run_db(_tripped, authc, address)
            notices.send_soon(notices.adecoy_used(authc, address, block.until if block else None))
        await asyncio.sleep(hashing.typical_verification_seconds())
        error = Reject(*WRONG_PASSWORD)
        error.auth_outcome = AUTH_FAILURE
        raise error
    yield
