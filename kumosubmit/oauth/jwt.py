"""JWTs of an external provider, checked against its JWKS: ``KUMOSUBMIT["OAUTH"]["VALIDATOR"] =
"kumosubmit.oauth.jwt.validate"``.

The signature is checked with joserfc (the JOSE library of Authlib's authors,
which Authlib 1.6 and later point to in place of ``authlib.jose``) against the
keys published at ``OAUTH["JWKS_URL"]``, with the algorithms ``OAUTH["ALGORITHMS"]``
only. The token must carry ``exp`` (not passed), ``iss`` equal to
``OAUTH["ISSUER"]`` and ``aud`` containing ``OAUTH["AUDIENCE"]`` (when set), the
scope ``OAUTH["SCOPE"]`` (``scope`` or ``scp``), and the claim
``OAUTH["LOGIN_CLAIM"]`` naming an active SMTP login.

The JWKS is kept ``OAUTH["JWKS_CACHE_TTL"]`` seconds; a token signed by a key
not in it fetches it anew at once (a provider's key rotation), at most once a
minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from kumosubmit.conf import app_settings, clears_on_setting_change
from kumosubmit.oauth import EXPIRED, INVALID, note
from kumosubmit.oauth.remote import ProviderError, fetch_json, login_from_claims

log = logging.getLogger(__name__)

#: Seconds between two fetches caused by an unknown key id.
REFETCH_INTERVAL = 60.0


class _Keys:
    def __init__(self) -> None:
        self.url: str | None = None
        self.keys: KeySet | None = None
        self.fetched = 0.0
        # One lock per event loop (each runsmtpd worker has one; the tests make several).
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    def clear(self) -> None:
        self.url, self.keys, self.fetched = None, None, 0.0

    cache_clear = clear  # for clears_on_setting_change

    async def get(self, *, refresh: bool = False) -> KeySet:
        settings = app_settings.oauth
        url = settings["JWKS_URL"]
        now = time.monotonic()
        fresh = (
            self.keys is not None
            and self.url == url
            and now - self.fetched < float(settings["JWKS_CACHE_TTL"])
        )
        if fresh and not (refresh and now - self.fetched >= REFETCH_INTERVAL):
            assert self.keys is not None
            return self.keys
        async with self._loop_lock():
            if self.fetched > now:  # fetched by another session meanwhile
                assert self.keys is not None
                return self.keys
            document = await fetch_json(url)
            try:
                keys = KeySet.import_key_set(document)
            except (JoseError, ValueError, TypeError, KeyError) as error:
                raise ProviderError(f"{url}: not a usable JWKS ({error})") from None
            self.url, self.keys, self.fetched = url, keys, time.monotonic()
            return keys


keys = clears_on_setting_change(_Keys())


def _claims_registry() -> jwt.JWTClaimsRegistry:
    settings = app_settings.oauth
    options: dict[str, Any] = {"exp": {"essential": True}}
    if settings["ISSUER"]:
        options["iss"] = {"essential": True, "value": settings["ISSUER"]}
    if settings["AUDIENCE"]:
        options["aud"] = {"essential": True, "value": settings["AUDIENCE"]}
    return jwt.JWTClaimsRegistry(**options)


def _decode(token: str, keyset: KeySet) -> dict[str, Any]:
    decoded = jwt.decode(token, keyset, algorithms=list(app_settings.oauth["ALGORITHMS"]))
    return dict(decoded.claims)


async def validate(authz: str, token: str, conn_meta: Any) -> str | bool:
    """The login the token is good for, or False; a JWKS that cannot be had: 454."""
    keyset = await keys.get()
    try:
        try:
            claims = _decode(token, keyset)
        except (JoseError, ValueError, KeyError):
            # Perhaps signed with a key the provider published since (fetched again at
            # most once per REFETCH_INTERVAL; otherwise the same keys, the same error).
            fresh = await keys.get(refresh=True)
            if fresh is keyset:
                raise
            claims = _decode(token, fresh)
    except (JoseError, ValueError, TypeError, KeyError) as error:
        # The error names the problem, never the token.
        log.info("conn %s: JWT refused: %s", conn_meta.get("conn_id"), type(error).__name__)
        note(conn_meta, INVALID)
        return False
    try:
        _claims_registry().validate(claims)
    except JoseError as error:
        expired = type(error).__name__ == "ExpiredTokenError"
        log.info("conn %s: JWT refused: %s", conn_meta.get("conn_id"), error.description)
        note(conn_meta, EXPIRED if expired else INVALID)
        return False
    result, details = await login_from_claims(claims)
    note(conn_meta, **details)
    return result
