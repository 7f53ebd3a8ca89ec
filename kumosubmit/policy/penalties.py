"""Failed-AUTH penalties around ``smtp_server_auth_plain`` and ``smtp_server_auth_oauthbearer``
(the rules: credentials/throttle.py).

A wrapper: before any handler checks a password it refuses a blocked address
(``421``, and the connection closes) or a blocked login (``454``), so a flood of
guesses costs one indexed query each and no argon2 work. Once the verdict is in,
a refusal is counted and answered after a growing delay, and a success clears
the address's count. If the block check cannot be made, the answer is ``454``
(fail closed), as when a handler fails.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any, NoReturn

from kumosubmit import notices
from kumosubmit.credentials import lanes, throttle
from kumosubmit.db import run_db
from kumosubmit.hooks import Reject, delay_reply
from kumosubmit.hooks.dryrun import is_dry_run
from kumosubmit.meta import AUTH_BLOCKED, AUTH_ERROR, ConnectionMeta

log = logging.getLogger("kumosubmit.smtp")

LOGIN_BLOCKED = (454, "4.7.0 Too many failed logins for this user, try again later")
ADDRESS_BLOCKED = (421, "4.7.0 Too many failed logins from your address, closing connection")
CHECK_FAILED = (454, "4.7.0 Temporary authentication failure")


def _refuse(reply: tuple[int, str], outcome: str) -> NoReturn:
    error = Reject(*reply)
    error.auth_outcome = outcome
    raise error


async def auth_plain(
    authz: str, authc: str, password: str, conn_meta: ConnectionMeta
) -> AsyncGenerator[None, Any]:
    """The wrapper of ``smtp_server_auth_plain``: counted per address and per authc."""
    penalties = _penalize(authc, conn_meta)
    await penalties.__anext__()
    verdict = yield
    await _finish(penalties, verdict)


async def auth_oauthbearer(
    authz: str, token: str, conn_meta: ConnectionMeta
) -> AsyncGenerator[None, Any]:
    """The wrapper of ``smtp_server_auth_oauthbearer``: the same counts and blocks, the
    login being the identity the client named (the authzid, XOAUTH2's ``user``); a token
    that names none is counted against its address only."""
    penalties = _penalize(authz, conn_meta)
    await penalties.__anext__()
    verdict = yield
    await _finish(penalties, verdict)


async def _finish(penalties: AsyncGenerator[None, Any], verdict: Any) -> None:
    try:
        await penalties.asend(verdict)
    except StopAsyncIteration:
        return
    raise RuntimeError("the penalties yielded twice")  # pragma: no cover


async def _penalize(authc: str, conn_meta: ConnectionMeta) -> AsyncGenerator[None, Any]:
    policy = throttle.policy()
    if not policy.enabled:
        yield
        return
    address = conn_meta["peer_address"]
    try:
        lanes_policy = lanes.policy()
        if lanes_policy.enabled:  # one trip to the database for both (lanes.py uses it)
            standing, lane = await run_db(
                lanes.throttle_and_lane, policy, lanes_policy, address, authc
            )
            if lane is not None:
                conn_meta.cache[lanes.PREFETCHED] = (address, authc, lane)
        else:
            standing = await throttle.check(policy, address, authc)
    except Exception:
        log.exception("conn %s: could not check AUTH blocks; answered 454", conn_meta["conn_id"])
        _refuse(CHECK_FAILED, AUTH_ERROR)
    block = standing.block
    if block is not None:
        conn_meta.cache.pop(lanes.PREFETCHED, None)
        conn_meta["auth_block"] = block.as_meta()
        log.info(
            "conn %s: AUTH for %r refused: %s %s blocked until %s",
            conn_meta["conn_id"],
            authc,
            block.kind,
            block.value,
            block.until.isoformat(),
        )
        _refuse(LOGIN_BLOCKED if block.kind == throttle.LOGIN else ADDRESS_BLOCKED, AUTH_BLOCKED)
    verdict = yield
    if is_dry_run(conn_meta):
        return  # nothing counted, cleared or delayed
    if verdict is False:
        try:
            failure = await throttle.record_failure(policy, address, authc)
            delay = policy.delay_for(failure.address_failures)
            for block in failure.new_blocks:
                if block.kind == throttle.LOGIN:  # its owner hears of it (notices.py)
                    notices.send_soon(
                        notices.alogin_blocked_by_name(block.value, address, block.until)
                    )
        except Exception:
            log.exception("conn %s: could not count an AUTH failure", conn_meta["conn_id"])
            delay = policy.max_delay  # uncounted, so at least slow
        delay_reply(conn_meta, delay)
    elif verdict is True and standing.has_failures:
        try:
            await run_db(throttle.forget_failures, policy, address, authc)
        except Exception:  # a success is never taken back for this
            log.exception("conn %s: could not clear AUTH failures", conn_meta["conn_id"])
