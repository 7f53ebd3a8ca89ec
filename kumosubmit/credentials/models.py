"""Who may submit mail: logins, their argon2id hashes and their identities."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from kumosubmit.conf import app_settings
from kumosubmit.credentials import hashing


def normalize_username(username: str) -> str:
    """Logins are case-insensitive, as mail users expect of addresses."""
    return username.strip().lower()


class SmtpLogin(models.Model):
    """A username and password a mail client authenticates with (AUTH PLAIN/LOGIN)."""

    username = models.CharField(_("username"), max_length=255, unique=True)
    password_hash = models.CharField(_("password hash"), max_length=255, editable=False)
    is_active = models.BooleanField(
        _("active"), default=True, help_text=_("Inactive logins are refused with 535.")
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="smtp_logins",
        help_text=_("The site user this login belongs to, if any."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    password_changed_at = models.DateTimeField(_("password changed"), null=True, editable=False)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    last_used_from = models.GenericIPAddressField(
        _("last used from"), null=True, blank=True, editable=False
    )
    must_change_password = models.BooleanField(
        _("must choose a new password"),
        default=False,
        help_text=_(
            "The login's own password is refused (535) until a new one is set, by its "
            "owner on the self-service pages or here. App passwords keep working."
        ),
    )
    # Sending limits (kumosubmit/sendlimits/): a list of rules like "30/minute" per kind;
    # None takes the site's KUMOSUBMIT["SEND_LIMITS"], [] is no limit.
    message_limits = models.JSONField(
        _("message limits"),
        null=True,
        blank=True,
        default=None,
        help_text=_("Messages this login may send, e.g. 30/minute, 1000/day."),
    )
    recipient_limits = models.JSONField(
        _("recipient limits"),
        null=True,
        blank=True,
        default=None,
        help_text=_("Recipients this login may send to, e.g. 5000/day."),
    )
    suspended_at = models.DateTimeField(
        _("suspended"),
        null=True,
        blank=True,
        editable=False,
        help_text=_("Sending far above its usual rate: MAIL FROM is refused until lifted."),
    )
    suspended_reason = models.CharField(
        _("why suspended"), max_length=255, blank=True, default="", editable=False
    )
    require_app_passwords = models.BooleanField(
        _("app passwords only"),
        null=True,
        blank=True,
        default=None,
        choices=[
            (None, _("As the site setting (REQUIRE_APP_PASSWORDS)")),
            (True, _("Yes: refuse the login's own password")),
            (False, _("No: accept the login's own password too")),
        ],
        help_text=_("Whether AUTH accepts only the login's app passwords."),
    )
    is_decoy = models.BooleanField(
        _("decoy"),
        default=False,
        db_index=True,
        help_text=_(
            "A honeytoken: no one should ever use this login. Any AUTH with it blocks the "
            "client's address at once on every host, before a password is checked, and "
            "alerts the site's admins; the client is answered as for a wrong password. "
            "Decoys never appear on the self-service pages."
        ),
    )

    class Meta:
        verbose_name = _("SMTP login")
        verbose_name_plural = _("SMTP logins")
        ordering = ["username"]

    def __str__(self) -> str:
        return self.username

    def save(self, *args: object, **kwargs: object) -> None:
        self.username = normalize_username(self.username)
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    #: What :meth:`set_password` changes: ``save(update_fields=SmtpLogin.PASSWORD_FIELDS)``.
    PASSWORD_FIELDS = ("password_hash", "password_changed_at", "must_change_password")

    @method_decorator(sensitive_variables())
    def set_password(self, password: str) -> None:
        """Hash and keep a new password (saved with the next ``save()``).

        A new password also ends a forced password change.
        """
        self.password_hash = hashing.make_hash(password)
        self.password_changed_at = timezone.now()
        self.must_change_password = False

    def has_usable_password(self) -> bool:
        """Whether the stored hash is one AUTH can check (argon2, or an imported scheme)."""
        return hashing.is_usable(self.password_hash)

    def requires_app_passwords(self) -> bool:
        """Whether AUTH refuses this login's own password (its flag, else the setting)."""
        if self.require_app_passwords is None:
            return bool(app_settings.REQUIRE_APP_PASSWORDS)
        return self.require_app_passwords

    def may_act_as(self, authz: str) -> bool:
        """Whether this login may authorize as ``authz`` (always as itself)."""
        authz = normalize_username(authz)
        return authz == self.username or self.identities.filter(identity=authz).exists()


class AuthorizedIdentity(models.Model):
    """Another identity (authz) a login may act as, e.g. a shared mailbox."""

    login = models.ForeignKey(
        SmtpLogin, on_delete=models.CASCADE, related_name="identities", verbose_name=_("login")
    )
    identity = models.CharField(_("identity"), max_length=255)

    class Meta:
        verbose_name = _("identity this login may act as")
        verbose_name_plural = _("identities this login may act as")
        constraints = [
            models.UniqueConstraint(fields=["login", "identity"], name="kumosubmit_identity_unique")
        ]

    def __str__(self) -> str:
        return self.identity

    def save(self, *args: object, **kwargs: object) -> None:
        self.identity = normalize_username(self.identity)
        super().save(*args, **kwargs)  # type: ignore[arg-type]


def validate_sender_pattern(value: str) -> None:
    """A whole address (``alice@example.com``) or a domain (``@example.com``)."""
    _local, at, domain = value.rpartition("@")
    if not at or not domain or "." not in domain or " " in value or domain.startswith("."):
        raise ValidationError(
            _("Enter an address (name@example.com) or a domain (@example.com)."),
            code="invalid",
        )


class AllowedSender(models.Model):
    """An envelope sender a login may use besides its own name (MAIL FROM after AUTH)."""

    login = models.ForeignKey(
        SmtpLogin, on_delete=models.CASCADE, related_name="senders", verbose_name=_("login")
    )
    pattern = models.CharField(
        _("address or @domain"),
        max_length=255,
        validators=[validate_sender_pattern],
        help_text=_("alice@example.com allows that address; @example.com the whole domain."),
    )

    class Meta:
        verbose_name = _("allowed sender")
        verbose_name_plural = _("allowed senders")
        constraints = [
            models.UniqueConstraint(fields=["login", "pattern"], name="kumosubmit_sender_unique")
        ]

    def __str__(self) -> str:
        return self.pattern

    def save(self, *args: object, **kwargs: object) -> None:
        self.pattern = self.pattern.strip().lower()
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class AuthFailureCounter(models.Model):
    """Failed AUTH attempts of one client address, one login, or one login from one address.

    Kept in the database so every listener process (and every host on one
    PostgreSQL) counts together; the rules are in :mod:`kumosubmit.credentials.throttle`.
    """

    class Kind(models.TextChoices):
        ADDRESS = "address", _("client address")
        LOGIN = "login", _("login")
        # Never blocks by itself: it tells which addresses a login block applies to.
        PAIR = "pair", _("address and login")
        # The same three for the web sign-in forms (kumosubmit/web/throttle.py): one
        # table, so the admin shows web and SMTP blocks in one list.
        WEB_ADDRESS = "web_address", _("web: client address")
        WEB_LOGIN = "web_login", _("web: user")
        WEB_PAIR = "web_pair", _("web: address and user")

    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    # An address (an IPv6 one as its network), a case-folded login, or "address login".
    value = models.CharField(_("value"), max_length=320)
    failures = models.PositiveIntegerField(_("failures"), default=0)
    first_failure_at = models.DateTimeField(_("first failure"), null=True, blank=True)
    last_failure_at = models.DateTimeField(_("last failure"), null=True, blank=True)
    blocked_until = models.DateTimeField(_("blocked until"), null=True, blank=True, db_index=True)

    class Meta:
        verbose_name = _("failed-AUTH counter")
        verbose_name_plural = _("failed-AUTH counters and blocks")
        ordering = ["-last_failure_at"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "value"], name="kumosubmit_failure_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.value}"

    def is_blocked(self, now: datetime | None = None) -> bool:
        """Whether this counter's block is in force (a login's only for some addresses)."""
        return self.blocked_until is not None and self.blocked_until > (now or timezone.now())


# -- AUTH lanes (kumosubmit/credentials/lanes.py) --------------------------------------


class KnownPair(models.Model):
    """A login that authenticated from a network: its AUTHs from there go first.

    Written on a good AUTH (only when new, stale or after failures), read before
    every AUTH; the network is a /24 for IPv4, ``AUTH_LANES["IPV6_PREFIX"]`` for IPv6.
    """

    login = models.ForeignKey(
        SmtpLogin, on_delete=models.CASCADE, related_name="known_pairs", verbose_name=_("login")
    )
    network = models.CharField(_("network"), max_length=64)
    last_success_at = models.DateTimeField(_("last success"))
    # Wrong passwords from this network since its last success: a pair that fails
    # AUTH_LANES["KNOWN_MAX_FAILURES"] times loses its priority until the next success.
    failures = models.PositiveIntegerField(_("failures since"), default=0)

    class Meta:
        verbose_name = _("known login and network")
        verbose_name_plural = _("known logins and networks")
        ordering = ["-last_success_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["login", "network"], name="kumosubmit_known_pair_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.login_id} {self.network}"


class SprayMark(models.Model):
    """One client address seen failing AUTH for one scope in one time window.

    The scope is ``login <name>`` (an existing login) or ``unknown`` (any name that
    is no login); the rows of a (scope, window) are the distinct addresses counted.
    """

    scope = models.CharField(_("scope"), max_length=300)
    window = models.BigIntegerField(_("window"))
    address = models.CharField(_("address"), max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["scope", "window", "address"], name="kumosubmit_spray_mark_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.window} {self.address}"


class SprayEvent(models.Model):
    """A password spray seen: failures for one login, or for unknown logins, from many
    addresses. While one is going on, the bounded AUTH lane is tightened site-wide."""

    class Scope(models.TextChoices):
        LOGIN = "login", _("one login from many addresses")
        UNKNOWN = "unknown", _("unknown logins from many addresses")

    scope = models.CharField(_("kind"), max_length=8, choices=Scope.choices)
    login = models.CharField(_("login"), max_length=255, blank=True)
    started_at = models.DateTimeField(_("started"))
    last_seen_at = models.DateTimeField(_("last seen"), db_index=True)
    # The most distinct addresses counted in one window.
    addresses = models.PositiveIntegerField(_("addresses in a window (most)"), default=0)

    class Meta:
        verbose_name = _("password spray")
        verbose_name_plural = _("password sprays")
        ordering = ["-last_seen_at"]

    def __str__(self) -> str:
        return f"{self.get_scope_display()} {self.login}".strip()


# -- app passwords ---------------------------------------------------------------------

#: Every app password starts with this, so secret scanners and people can tell it apart.
APP_PASSWORD_PREFIX = "ksub_"  # noqa: S105 (a format, not a password)
#: Lowercase RFC 4648 base32: its digits are 2-7, so there is no 0 or 1 to take for o or l.
APP_PASSWORD_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # noqa: S105
#: Characters of the public id (40 bits: collisions are retried) and of the secret.
APP_PASSWORD_ID_LENGTH = 8
APP_PASSWORD_SECRET_LENGTH = 26  # 26 * 5 = 130 bits from the OS's CSPRNG
_APP_PASSWORD_RE = re.compile(
    rf"{APP_PASSWORD_PREFIX}([{APP_PASSWORD_ALPHABET}]{{{APP_PASSWORD_ID_LENGTH}}})"
    rf"_[{APP_PASSWORD_ALPHABET}]{{{APP_PASSWORD_SECRET_LENGTH}}}"
)


def _random_string(length: int) -> str:
    return "".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(length))


@sensitive_variables()
def app_password_id(password: str) -> str | None:
    """The public id of a password shaped like an app password, else None.

    The id is not secret (like the prefix of a GitHub token): it finds the one
    row whose hash to check, so AUTH costs one argon2 verification however many
    app passwords a login has.
    """
    match = _APP_PASSWORD_RE.fullmatch(password)
    return match.group(1) if match else None


class RevocableQuerySet(models.QuerySet[Any]):
    """Credentials that can be revoked and may expire (app passwords, SMTP tokens)."""

    def live(self, now: datetime | None = None) -> Any:
        """Neither revoked nor expired."""
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)


class Revocable:
    """A credential's status, from its ``revoked_at`` and ``expires_at``: active, expired
    (a time, not a stored flag) or revoked."""

    class Status(models.TextChoices):
        ACTIVE = "active", _("active")
        EXPIRED = "expired", _("expired")
        REVOKED = "revoked", _("revoked")

    revoked_at: datetime | None
    expires_at: datetime | None

    def status(self, now: datetime | None = None) -> str:
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.expires_at is not None and self.expires_at <= (now or timezone.now()):
            return self.Status.EXPIRED
        return self.Status.ACTIVE

    def get_status_display(self) -> str:
        return str(self.Status(self.status()).label)

    def is_live(self, now: datetime | None = None) -> bool:
        return self.status(now) == self.Status.ACTIVE


class AppPassword(Revocable, models.Model):
    """A generated password for one login, for one mail client; revocable on its own.

    The server makes it (``ksub_<id>_<secret>``, 130 bits of secret), shows it
    once, and keeps only its argon2id hash. AUTH accepts it as the password of
    its login until it is revoked or expires.
    """

    login = models.ForeignKey(
        SmtpLogin, on_delete=models.CASCADE, related_name="app_passwords", verbose_name=_("login")
    )
    label = models.CharField(
        _("label"), max_length=100, help_text=_("Where it is used, e.g. “Phone” or “Laptop”.")
    )
    public_id = models.CharField(_("id"), max_length=16, unique=True, editable=False)
    password_hash = models.CharField(_("password hash"), max_length=255, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    last_used_from = models.GenericIPAddressField(
        _("last used from"), null=True, blank=True, editable=False
    )

    # Limits of its own, within its login's (None: only the login's apply).
    message_limits = models.JSONField(_("message limits"), null=True, blank=True, default=None)
    recipient_limits = models.JSONField(_("recipient limits"), null=True, blank=True, default=None)

    objects = RevocableQuerySet.as_manager()

    class Meta:
        verbose_name = _("app password")
        verbose_name_plural = _("app passwords")
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.label} ({APP_PASSWORD_PREFIX}{self.public_id}_…)"

    @property
    def hint(self) -> str:
        """What may be shown of it: the prefix and public id, never the secret."""
        return f"{APP_PASSWORD_PREFIX}{self.public_id}_…"

    def revoke(self) -> bool:
        """Revoke it now; False if it was revoked already (the first time is kept)."""
        now = timezone.now()
        done = AppPassword.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
            revoked_at=now
        )
        if done:
            self.revoked_at = now
        return bool(done)


@sensitive_variables()
def create_app_password(
    login: SmtpLogin, label: str, expires_at: datetime | None = None
) -> tuple[AppPassword, str]:
    """Make, hash and save a new app password; returns it and the one copy of its text.

    The caller shows the text once and forgets it: only the hash is stored.
    """
    secret = _random_string(APP_PASSWORD_SECRET_LENGTH)
    for _attempt in range(5):
        public_id = _random_string(APP_PASSWORD_ID_LENGTH)
        password = f"{APP_PASSWORD_PREFIX}{public_id}_{secret}"
        app_password = AppPassword(
            login=login,
            label=label,
            public_id=public_id,
            password_hash=hashing.make_hash(password),
            expires_at=expires_at,
        )
        try:
            with transaction.atomic():  # a savepoint: an id collision is retried
                app_password.save()
        except IntegrityError:
            if not AppPassword.objects.filter(public_id=public_id).exists():
                raise
            continue
        return app_password, password
    raise RuntimeError("could not find a free app password id")  # 2**40 ids: never happens
