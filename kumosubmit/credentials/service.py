"""The built-in ``smtp_server_auth_plain`` handler: logins and app passwords from the database.

A login authenticates with its own password or with any live app password of
that login (:class:`AppPassword`: neither revoked nor expired). An app password
carries a short public id (``ksub_<id>_<secret>``), so the one row whose hash
to check is found by an indexed lookup: every attempt costs exactly one argon2
verification, whether the login has no app password or a hundred, and whether
or not the login exists.

Which credential an attempt used, and why a correct one was still refused, is
noted in ``conn_meta["auth_credentials"]`` (kept in the audit row; never the
password), so owners see their sign-ins per app password.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from kumosubmit import notices
from kumosubmit.credentials import hashing
from kumosubmit.credentials.authcache import auth_cache
from kumosubmit.credentials.models import (
    AppPassword,
    SmtpLogin,
    app_password_id,
    normalize_username,
)
from kumosubmit.db import run_db, sqlite_turn
from kumosubmit.hooks.dryrun import is_dry_run

log = logging.getLogger(__name__)

#: Why an attempt was refused or accepted, as noted in conn_meta["auth_credentials"].
ACCEPTED = "accepted"
WRONG_PASSWORD = "wrong_password"  # noqa: S105 (an outcome, not a password)
REVOKED = "revoked"
EXPIRED = "expired"
APP_PASSWORDS_ONLY = "app_passwords_only"
MUST_CHANGE_PASSWORD = "must_change_password"  # noqa: S105
AUTHZ_NOT_ALLOWED = "authz_not_allowed"

#: A credential's "last used" is rewritten at most this often from one address. A
#: client that opens a session per message would otherwise cost a write (a disk
#: flush, and a turn at SQLite's one writer) per AUTH, which every message being
#: stored meanwhile waits behind; a new address is always written at once.
LAST_USED_PRECISION = timedelta(seconds=60)


@dataclass(frozen=True)
class _Candidate:
    """What one attempt is checked against: a hash, and the terms of the verdict."""

    login_pk: int
    password_hash: str
    may_act: bool
    # Set when the password names one of the login's app passwords.
    app_password_pk: int | None = None
    app_password_label: str = ""
    # Why even the right password is refused (revoked, expired, ...), or None.
    refusal: str | None = None
    # The last use already recorded (of the app password too, if one was used).
    last_used: tuple[tuple[datetime | None, str | None], ...] = ()

    def used_lately(self, now: datetime, peer: str | None) -> bool:
        """Whether the recorded last use is this address's, within LAST_USED_PRECISION."""
        return bool(self.last_used) and all(
            at is not None and now - at < LAST_USED_PRECISION and where == peer
            for at, where in self.last_used
        )

    def nothing_to_record(self, new_hash: str | None, now: datetime, peer: str | None) -> bool:
        """Whether a success needs no trip to the database: no hash to upgrade, the last
        use already recorded (LAST_USED_PRECISION), and no app password whose revocation
        could have landed since the lookup."""
        return new_hash is None and self.app_password_pk is None and self.used_lately(now, peer)

    @property
    def last_address(self) -> str | None:
        """Where the login was last used from, as recorded."""
        return self.last_used[0][1] if self.last_used else None

    @property
    def identity(self) -> str:
        """Which credential this is, for the auth cache."""
        if self.app_password_pk is None:
            return f"login:{self.login_pk}"
        return f"app-password:{self.app_password_pk}"

    def note(self, result: str, cached: bool = False) -> dict[str, Any]:
        """What conn_meta keeps about this attempt."""
        note: dict[str, Any] = {"kind": "password", "result": result}
        if self.app_password_pk is not None:
            note.update(
                kind="app_password",
                app_password_id=self.app_password_pk,
                label=self.app_password_label,
            )
        if cached:
            note["cached"] = True
        return note


def active_login(username: str) -> QuerySet[SmtpLogin]:
    """The active login of a name (usernames are unique): one query per AUTH."""
    return SmtpLogin.objects.filter(username=normalize_username(username), is_active=True)


def _find(authc: str, authz: str, public_id: str | None, now: datetime) -> _Candidate | None:
    login = active_login(authc).first()
    if login is None:
        return None
    may_act = login.may_act_as(authz)
    if public_id is not None:
        app_password = login.app_passwords.filter(public_id=public_id).first()
        if app_password is not None:
            status = app_password.status(now)
            return _Candidate(
                login.pk,
                app_password.password_hash,
                may_act,
                app_password.pk,
                app_password.label,
                refusal=None if status == AppPassword.Status.ACTIVE else str(status),
                last_used=(
                    (login.last_used_at, login.last_used_from),
                    (app_password.last_used_at, app_password.last_used_from),
                ),
            )
    # Not one of its app passwords: the login's own password. Where policy refuses it, it
    # is still verified (the one verification every attempt costs), so the audit row can
    # tell its owner "right password, but refused" from a wrong one.
    refusal = None
    if login.requires_app_passwords():
        refusal = APP_PASSWORDS_ONLY
    elif login.must_change_password:
        refusal = MUST_CHANGE_PASSWORD
    return _Candidate(
        login.pk,
        login.password_hash,
        may_act,
        refusal=refusal,
        last_used=((login.last_used_at, login.last_used_from),),
    )


def _record_use(candidate: _Candidate, new_hash: str | None, peer: str | None) -> bool:
    """Note a good login (and an upgraded hash); False if its app password was revoked meanwhile."""
    now = timezone.now()
    if new_hash is None and candidate.used_lately(now, peer):
        # Nothing to write (LAST_USED_PRECISION); a revocation still wins, through a read.
        return candidate.app_password_pk is None or (
            AppPassword.objects.filter(
                pk=candidate.app_password_pk, revoked_at__isnull=True
            ).exists()
        )
    used = {"last_used_at": now, "last_used_from": peer}
    old_hash = candidate.password_hash
    with sqlite_turn(), transaction.atomic():  # one commit for all of it
        if candidate.app_password_pk is not None:
            # A revocation that lands while the password was being verified wins.
            rows = AppPassword.objects.filter(pk=candidate.app_password_pk, revoked_at__isnull=True)
            if not rows.update(**used):
                return False
            if new_hash:
                rows.filter(password_hash=old_hash).update(password_hash=new_hash)
        elif new_hash:
            # Only if nobody changed the password meanwhile; an upgrade is no password change.
            SmtpLogin.objects.filter(pk=candidate.login_pk, password_hash=old_hash).update(
                password_hash=new_hash
            )
        SmtpLogin.objects.filter(pk=candidate.login_pk).update(**used)
    return True


def _note(conn_meta: dict[str, Any], note: dict[str, Any]) -> None:
    # The handler appends this attempt to auth_attempts after the hook returns, so
    # the attempt's index is the current length.
    note["attempt"] = len(conn_meta.get("auth_attempts") or ())
    conn_meta.setdefault("auth_credentials", []).append(note)


@sensitive_variables()
async def authenticate(authz: str, authc: str, password: str, conn_meta: dict[str, Any]) -> bool:
    """Check ``password`` for login ``authc`` acting as ``authz``.

    Every refusal after the lookup costs one argon2 verification, so the time
    taken does not tell whether a login exists, is active, may act as authz,
    has app passwords, or may use its own password.
    """
    if not authc or not password:
        return False
    candidate = await run_db(_find, authc, authz, app_password_id(password), timezone.now())
    # The row was just read: a cached pair matches only while its hash is unchanged.
    cached = candidate is not None and auth_cache.verified(
        candidate.identity, candidate.password_hash, password
    )
    if cached:
        matches, needs_rehash = True, False
    else:
        matches, needs_rehash = await hashing.averify(
            candidate.password_hash if candidate else None, password
        )
    if candidate is None:
        return False
    if not matches:
        _note(conn_meta, candidate.note(WRONG_PASSWORD))
        return False
    if not cached and not needs_rehash:
        auth_cache.remember(candidate.identity, candidate.password_hash, password)
    if candidate.refusal is not None:
        _note(conn_meta, candidate.note(candidate.refusal, cached))
        return False
    if not candidate.may_act:
        _note(conn_meta, candidate.note(AUTHZ_NOT_ALLOWED, cached))
        return False
    new_hash = await hashing.amake_hash(password) if needs_rehash else None
    peer = conn_meta.get("peer_address")
    recorded = (
        is_dry_run(conn_meta)  # smtppolicy: nothing is written
        or candidate.nothing_to_record(new_hash, timezone.now(), peer)
        or await run_db(_record_use, candidate, new_hash, peer)
    )
    if not recorded:
        _note(conn_meta, candidate.note(REVOKED, cached))
        return False
    _note(conn_meta, candidate.note(ACCEPTED, cached))
    if peer and not is_dry_run(conn_meta) and candidate.last_address != peer:
        # Used from somewhere else than last time: its owner hears if it is new to the
        # login (notices.py decides, once per address, in the database).
        credential = candidate.app_password_label or "password"
        notices.send_soon(
            notices.anew_address_used_by(candidate.login_pk, peer, credential=credential)
        )
    if new_hash:
        log.info("upgraded a password hash of login %s to argon2id with current parameters", authc)
    return True


def may_act_as(username: str, authz: str) -> bool:
    """Whether the active login ``username`` may act as ``authz`` (the PLAIN rule, for
    the identity a token was good for)."""
    login = active_login(username).first()
    return login is not None and login.may_act_as(authz)
