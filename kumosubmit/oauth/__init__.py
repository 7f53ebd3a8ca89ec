"""Tokens instead of passwords: the validators of ``smtp_server_auth_oauthbearer``.

:func:`validate` is the event's built-in answer (``DEFAULT_AUTHENTICATORS``): it
hands the token to the validator ``KUMOSUBMIT["OAUTH"]["VALIDATOR"]`` names:

- :mod:`kumosubmit.oauth.toolkit`: django-oauth-toolkit in this project, checked
  in the database at every AUTH (a revocation counts at once);
- :mod:`kumosubmit.oauth.introspection`: an external provider's RFC 7662 endpoint;
- :mod:`kumosubmit.oauth.jwt`: a JWT signed by a key of the provider's JWKS.

Each is a handler of the event, ``(authz, token, conn_meta)``: it returns the
SMTP login the token is good for, ``False`` to refuse it, or ``None`` to pass.
A validator notes what it found in ``conn_meta["auth_credentials"]`` (never the
token), so the audit row and the owner's pages tell why a token was refused.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from django.utils.module_loading import import_string

from kumosubmit.conf import app_settings, clears_on_setting_change

#: Why a token was accepted or refused, as noted in conn_meta["auth_credentials"].
ACCEPTED = "accepted"
UNKNOWN = "unknown_token"
EXPIRED = "expired"
REVOKED = "revoked"
WRONG_SCOPE = "wrong_scope"
NO_LOGIN = "no_login"
INVALID = "invalid_token"


def checksum(token: str) -> str:
    """The SHA-256 of a token, hex: how a token is found without keeping it (as
    django-oauth-toolkit's ``token_checksum``)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def note(conn_meta: dict[str, Any], result: str, **details: Any) -> None:
    """Note what a validator found about this attempt (kept in the audit row)."""
    entry: dict[str, Any] = {"kind": "oauth_token", "result": result, **details}
    entry["attempt"] = len(conn_meta.get("auth_attempts") or ())
    conn_meta.setdefault("auth_credentials", []).append(entry)


def has_scope(granted: Any, scope: str) -> bool:
    """Whether ``scope`` is among the granted ones (a space-separated string, or a list)."""
    if isinstance(granted, str):
        granted = granted.split()
    return isinstance(granted, list | tuple) and scope in granted


@clears_on_setting_change
@functools.cache
def validator() -> Any:
    """The configured validator (imported once, until the setting changes), or None."""
    path = app_settings.oauth["VALIDATOR"]
    return import_string(path) if path else None


async def validate(authz: str, token: str, conn_meta: Any) -> str | bool | None:
    """``smtp_server_auth_oauthbearer``'s built-in answer: the configured validator's."""
    check = validator()
    if check is None:
        return None  # no decision: 454 (the mechanisms are not offered then)
    result: str | bool | None = await check(authz, token, conn_meta)
    return result
