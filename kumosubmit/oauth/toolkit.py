"""Tokens of django-oauth-toolkit in this project: ``KUMOSUBMIT["OAUTH"]["VALIDATOR"] =
"kumosubmit.oauth.toolkit.validate"``.

A token is good when the toolkit's ``AccessToken`` exists (a revoked one is
deleted), has not expired, carries the scope ``OAUTH["SCOPE"]`` (``smtp``) and
was issued to an active site user. It is then good for the active SMTP logins
that user owns (``SmtpLogin.owner``): the one named as authzid (XOAUTH2's
``user``) or, when none is named, the user's only login. The database is asked
at every AUTH, so a revocation counts at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from kumosubmit.conf import app_settings
from kumosubmit.credentials.models import SmtpLogin, normalize_username
from kumosubmit.credentials.service import LAST_USED_PRECISION
from kumosubmit.db import run_db, sqlite_turn
from kumosubmit.hooks.dryrun import is_dry_run
from kumosubmit.oauth import (
    ACCEPTED,
    EXPIRED,
    NO_LOGIN,
    REVOKED,
    UNKNOWN,
    WRONG_SCOPE,
    checksum,
    has_scope,
    note,
)
from kumosubmit.oauth.models import SmtpToken


def _login_for(user_id: int, authz: str) -> SmtpLogin | None:
    logins = SmtpLogin.objects.filter(owner_id=user_id, is_active=True)
    if authz:
        named = logins.filter(username=normalize_username(authz)).first()
        if named is not None:
            return named
    # None named, or one the user's login may act as (checked after this handler).
    only = list(logins[:2])
    return only[0] if len(only) == 1 else None


def _record_use(row_filter: Q, login: SmtpLogin, peer: str | None, now: datetime) -> None:
    # As for passwords: at most once a LAST_USED_PRECISION per address (an UPDATE that
    # finds nothing to change when it was recorded lately).
    stale = (
        Q(last_used_at__isnull=True)
        | Q(last_used_at__lt=now - LAST_USED_PRECISION)
        | ~Q(last_used_from=peer)
    )
    used = {"last_used_at": now, "last_used_from": peer}
    if not (
        SmtpToken.objects.filter(row_filter).filter(stale).exists()
        or SmtpLogin.objects.filter(pk=login.pk).filter(stale).exists()
    ):
        return  # recorded lately: no write, no turn at SQLite's one writer
    with sqlite_turn(), transaction.atomic():
        SmtpToken.objects.filter(row_filter).filter(stale).update(**used)
        SmtpLogin.objects.filter(pk=login.pk).filter(stale).update(**used)


def _check(authz: str, digest: str, peer: str | None, record: bool) -> tuple[Any, dict[str, Any]]:
    from oauth2_provider.models import get_access_token_model

    now = timezone.now()
    access_token = (
        get_access_token_model()
        .objects.select_related("user", "application")
        .filter(token_checksum=digest)
        .first()
    )
    row = SmtpToken.objects.filter(token_checksum=digest).only("pk", "label", "revoked_at").first()
    details: dict[str, Any] = {}
    if row is not None:
        details.update(token_id=row.pk, label=row.label)
    if access_token is None:
        return False, {"result": REVOKED if row is not None else UNKNOWN, **details}
    if access_token.application is not None:
        details["application"] = access_token.application.name
    if access_token.is_expired():
        return False, {"result": EXPIRED, **details}
    if not has_scope(access_token.scope, app_settings.oauth["SCOPE"]):
        return False, {"result": WRONG_SCOPE, **details}
    user = access_token.user
    if user is None or not user.is_active:
        return False, {"result": NO_LOGIN, **details}
    login = _login_for(user.pk, authz)
    if login is None:
        return False, {"result": NO_LOGIN, **details}
    if record:
        _record_use(Q(token_checksum=digest), login, peer, now)
    return login.username, {"result": ACCEPTED, **details}


async def validate(authz: str, token: str, conn_meta: Any) -> str | bool:
    """The login the token is good for, or False (see the module's docstring)."""
    result, details = await run_db(
        _check, authz, checksum(token), conn_meta.get("peer_address"), not is_dry_run(conn_meta)
    )
    note(conn_meta, **details)
    return result  # type: ignore[no-any-return]
