"""The legitimate user first: the argon2 lane of an AUTH, around ``smtp_server_auth_plain``.

A wrapper, after the failed-AUTH penalties (penalties.py): before any handler
checks a password it looks up, from the login named and the client's address
only, whether the pair is known (kumosubmit/credentials/lanes.py has the rules).
A known pair's verification goes to the argon2 pool's priority lane; any other
attempt takes a place in the bounded lane, or, when that lane is full, is
answered ``454 4.7.0`` at once, with no argon2 work done (as is one whose
verification has not started after ``MAX_WAIT`` seconds). Once the verdict is in,
a success marks the pair known (written only when new, stale or after failures),
and a failure in the bounded lane counts towards spray detection; while a spray
is going on, such failures are answered after ``SPRAY_DELAY`` more seconds.

The lane is noted in the attempt's audit record (``lane``) and in ``conn_meta["auth_lane"]``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any, NoReturn

from kumosubmit import metrics
from kumosubmit.credentials import hashing, lanes
from kumosubmit.db import run_db
from kumosubmit.hooks import Reject, delay_reply
from kumosubmit.hooks.dryrun import is_dry_run
from kumosubmit.meta import AUTH_BUSY, AUTH_ERROR, ConnectionMeta

log = logging.getLogger("kumosubmit.smtp")

LANE_FULL = (454, "4.7.0 Too many authentication attempts in progress, try again later")
CHECK_FAILED = (454, "4.7.0 Temporary authentication failure")


def _refuse(reply: tuple[int, str], outcome: str) -> NoReturn:
    error = Reject(*reply)
    error.auth_outcome = outcome
    raise error


async def auth_plain(
    authz: str, authc: str, password: str, conn_meta: ConnectionMeta
) -> AsyncGenerator[None, Any]:
    policy = lanes.policy()
    if not policy.enabled:
        yield
        return
    address = conn_meta["peer_address"]
    try:
        standing = lanes.prefetched(conn_meta, address, authc) or await lanes.check(
            policy, address, authc
        )
    except Exception:
        log.exception(
            "conn %s: could not look up the AUTH lane; answered 454", conn_meta["conn_id"]
        )
        _refuse(CHECK_FAILED, AUTH_ERROR)
    lane = standing.lane
    conn_meta.note_auth_lane(lane)
    dry_run = is_dry_run(conn_meta)
    limit = None if lane == lanes.PRIORITY or dry_run else policy.queue_length(standing.spray)
    bounded = lane == lanes.BOUNDED and not dry_run

    def expired() -> Reject:
        log.debug(
            "conn %s: AUTH for %r refused: not verified within %.1f s in the %s lane",
            conn_meta["conn_id"],
            authc,
            policy.max_wait,
            lane,
        )
        metrics.lane_refused(lane)
        error = Reject(*LANE_FULL)
        error.auth_outcome = AUTH_BUSY
        return error

    ticket = hashing.admit(
        lane, limit, max_wait=policy.max_wait if bounded else None, expired=expired
    )
    if ticket is None:
        # Debug only: in a spray there are hundreds a second; the metrics count them, the
        # audit row has each (outcome "busy"), and the spray itself is logged as a warning.
        metrics.lane_refused(lane)
        log.debug(
            "conn %s: AUTH for %r refused: the %s lane is full (%d waiting%s)",
            conn_meta["conn_id"],
            authc,
            lane,
            limit,
            ", spray" if standing.spray else "",
        )
        _refuse(LANE_FULL, AUTH_BUSY)
    hashing.enter(ticket)
    try:
        verdict = yield
    finally:
        hashing.leave(ticket)
    if dry_run:
        return  # nothing written, nothing delayed
    if verdict is True and standing.refresh:
        try:
            await run_db(lanes.record_success, policy, standing)
        except Exception:  # a success is never taken back for this
            log.exception("conn %s: could not note a known AUTH pair", conn_meta["conn_id"])
    elif verdict is False:
        try:
            spray = await lanes.record_failure(policy, standing, address)
        except Exception:
            log.exception("conn %s: could not count an AUTH failure's lane", conn_meta["conn_id"])
            spray = None
        if lane == lanes.BOUNDED and (standing.spray or spray is not None):
            delay_reply(conn_meta, policy.spray_delay)


async def auth_oauthbearer(
    authz: str, token: str, conn_meta: ConnectionMeta
) -> AsyncGenerator[None, Any]:
    """The same lanes around ``smtp_server_auth_oauthbearer``, keyed on the identity the
    token is offered for (``authz``): a place in the bounded lane for an unknown pair,
    spray detection over failed tokens, the pair known after a success."""
    lane = auth_plain(authz, authz, "", conn_meta)
    await lane.__anext__()
    verdict = yield
    try:
        await lane.asend(verdict)
    except StopAsyncIteration:
        return
    await lane.aclose()  # pragma: no cover - auth_plain yields once
