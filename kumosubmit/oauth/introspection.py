"""An external provider's RFC 7662 token introspection: ``KUMOSUBMIT["OAUTH"]["VALIDATOR"] =
"kumosubmit.oauth.introspection.validate"``.

The token is POSTed to ``OAUTH["INTROSPECTION_URL"]`` with this server's client
credentials (HTTP Basic, ``CLIENT_ID`` and ``CLIENT_SECRET``; RFC 7662 section
2.1). An answer with ``"active": true``, the scope ``OAUTH["SCOPE"]`` and the
claim ``OAUTH["LOGIN_CLAIM"]`` naming an active SMTP login lets the client in.

Active answers are kept for ``OAUTH["CACHE_TTL"]`` seconds, never beyond the
token's ``exp``, keyed by the token's SHA-256 (the token is not kept); an
answer without ``exp`` is not kept. Refusals are not kept: a token revoked at the
provider is refused at most ``CACHE_TTL`` seconds later.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import urllib.parse
from typing import Any

from kumosubmit.conf import app_settings, clears_on_setting_change
from kumosubmit.oauth import EXPIRED, INVALID, checksum, note
from kumosubmit.oauth.remote import ProviderError, fetch_json, login_from_claims

log = logging.getLogger(__name__)

#: Answers kept at most (the oldest go first).
CACHE_SIZE = 10_000


class _Cache:
    """token checksum -> (claims, monotonic deadline)."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[dict[str, Any], float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[1] <= time.monotonic():
                del self._items[key]
                return None
            return item[0]

    def put(self, key: str, claims: dict[str, Any], ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            if len(self._items) >= CACHE_SIZE:
                del self._items[next(iter(self._items))]
            self._items[key] = (claims, time.monotonic() + ttl)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    cache_clear = clear  # for clears_on_setting_change


cache = clears_on_setting_change(_Cache())


def _ttl(claims: dict[str, Any]) -> float:
    expires = claims.get("exp")
    if not isinstance(expires, int | float):
        return 0.0
    return min(float(app_settings.oauth["CACHE_TTL"]), float(expires) - time.time())


async def introspect(token: str) -> dict[str, Any]:
    """The provider's answer about ``token`` (RFC 7662 section 2.2)."""
    settings = app_settings.oauth
    headers = {}
    if settings["CLIENT_ID"]:
        # RFC 6749 section 2.3.1: both parts form-encoded, then Basic.
        pair = ":".join(
            urllib.parse.quote(str(settings[key] or ""), safe="")
            for key in ("CLIENT_ID", "CLIENT_SECRET")
        )
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    answer = await fetch_json(
        settings["INTROSPECTION_URL"],
        form={"token": token, "token_type_hint": "access_token"},
        headers=headers,
    )
    if not isinstance(answer, dict):
        raise ProviderError("the introspection answer is not a JSON object")
    return answer


async def validate(authz: str, token: str, conn_meta: Any) -> str | bool:
    """The login the token is good for, or False; a provider that cannot be asked: 454."""
    key = checksum(token)
    claims = cache.get(key)
    cached = claims is not None
    if claims is None:
        claims = await introspect(token)
        if claims.get("active") is not True:
            note(conn_meta, INVALID)
            return False
        expires = claims.get("exp")
        if isinstance(expires, int | float) and expires <= time.time():
            note(conn_meta, EXPIRED)
            return False
        cache.put(key, claims, _ttl(claims))
    result, details = await login_from_claims(claims)
    if cached:
        details["cached"] = True
    note(conn_meta, **details)
    return result
