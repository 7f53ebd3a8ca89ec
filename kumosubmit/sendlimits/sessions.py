"""Which buckets a session's messages count against: its login's, and its app password's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kumosubmit.credentials.models import AppPassword, SmtpLogin, normalize_username
from kumosubmit.sendlimits.backends import Bucket
from kumosubmit.sendlimits.rules import (
    KINDS,
    MESSAGES,
    RECIPIENTS,
    Rule,
    default_limits,
    limits_of,
)


def login_rules(login: SmtpLogin) -> dict[str, tuple[Rule, ...] | None]:
    """The login's rules per kind: its own where set, else the site's defaults."""
    own = {MESSAGES: login.message_limits, RECIPIENTS: login.recipient_limits}
    return limits_of(own, defaults=default_limits())


def app_password_rules(app_password: AppPassword) -> dict[str, tuple[Rule, ...] | None]:
    """An app password's own rules per kind (None: only its login's apply)."""
    own = {MESSAGES: app_password.message_limits, RECIPIENTS: app_password.recipient_limits}
    return limits_of(own, defaults=None)


def login_buckets(login: SmtpLogin) -> list[Bucket]:
    return [
        Bucket(f"login:{login.pk}", kind, rule, login.pk)
        for kind, rules in login_rules(login).items()
        for rule in rules or ()
    ]


def app_password_buckets(app_password: AppPassword) -> list[Bucket]:
    return [
        Bucket(f"app:{app_password.pk}", kind, rule, app_password.login_id, app_password.pk)
        for kind, rules in app_password_rules(app_password).items()
        for rule in rules or ()
    ]


@dataclass(frozen=True)
class SessionLimits:
    """What a session's messages count against, read once per connection."""

    login_id: int
    username: str
    owner_email: str
    app_password_id: int | None = None
    app_password_label: str = ""
    suspended: bool = False
    buckets: tuple[Bucket, ...] = ()
    by_kind: Mapping[str, tuple[Bucket, ...]] = field(default_factory=dict)

    def of(self, kind: str) -> tuple[Bucket, ...]:
        return self.by_kind.get(kind, ())

    def credential(self, bucket: Bucket) -> str:
        """Whose limit ``bucket`` is, in words."""
        if bucket.app_password_id is not None:
            return f"the app password “{self.app_password_label}” of the login {self.username}"
        return f"the login {self.username}"


def app_password_used(conn_meta: Mapping[str, Any]) -> int | None:
    """The app password the session authenticated with (credentials/service.py notes it)."""
    for note in reversed(conn_meta.get("auth_credentials") or []):
        if note.get("result") == "accepted":
            return note.get("app_password_id") if note.get("kind") == "app_password" else None
    return None


def load(authn_id: str, app_password_id: int | None) -> SessionLimits | None:
    """The limits of the login that authenticated (None if it is not a database login)."""
    login = (
        SmtpLogin.objects.select_related("owner")
        .filter(username=normalize_username(authn_id))
        .first()
    )
    if login is None:
        return None
    buckets = login_buckets(login)
    label = ""
    if app_password_id is not None:
        app_password = AppPassword.objects.filter(pk=app_password_id, login=login).first()
        if app_password is not None:
            label = app_password.label
            buckets += app_password_buckets(app_password)
    owner = login.owner
    return SessionLimits(
        login_id=login.pk,
        username=login.username,
        owner_email=(getattr(owner, "email", "") or "") if owner is not None else "",
        app_password_id=app_password_id,
        app_password_label=label,
        suspended=login.suspended_at is not None,
        buckets=tuple(buckets),
        by_kind={kind: tuple(b for b in buckets if b.kind == kind) for kind in KINDS},
    )
