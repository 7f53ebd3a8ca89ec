"""``python manage.py createsmtptoken LOGIN [--expires DAYS]``: a token for scripts.

Issues a django-oauth-toolkit access token with the ``smtp`` scope for the
login's owner and prints it once, alone on standard output (so
``TOKEN=$(manage.py createsmtptoken alice@example.com)`` works). It is good for
AUTH OAUTHBEARER and XOAUTH2 (docs/oauth.md) until it expires or is revoked on
the self-service pages or in the admin.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from kumosubmit.credentials.models import SmtpLogin, normalize_username
from kumosubmit.oauth.tokens import NoOwner, create_smtp_token, default_expiry


def _days(value: str) -> float:
    days = float(value)
    if not 0 < days <= 36500:
        raise ValueError("DAYS must be more than 0 and at most 36500")
    return days


class Command(BaseCommand):
    help = (
        "Issue an OAuth access token with the smtp scope for the owner of an SMTP login, "
        "for AUTH OAUTHBEARER or XOAUTH2, and print it once."
    )
    requires_migrations_checks = True

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("login", metavar="LOGIN", help="The SMTP login the token is for.")
        parser.add_argument(
            "--expires",
            type=_days,
            default=None,
            metavar="DAYS",
            help="Days until the token expires (default: KUMOSUBMIT['OAUTH']['TOKEN_DAYS']).",
        )
        parser.add_argument(
            "--label", default="", help="What it is for, shown with it (default: createsmtptoken)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not apps.is_installed("oauth2_provider"):
            raise CommandError(
                "django-oauth-toolkit is not in INSTALLED_APPS ('oauth2_provider'); "
                "see docs/oauth.md"
            )
        username = normalize_username(options["login"])
        login = SmtpLogin.objects.filter(username=username).first()
        if login is None:
            raise CommandError(f"No SMTP login {username!r}.")
        if not login.is_active:
            raise CommandError(f"The login {username!r} is inactive.")
        try:
            row, token = create_smtp_token(
                login, options["label"] or "createsmtptoken", default_expiry(options["expires"])
            )
        except NoOwner as error:
            raise CommandError(f"{error}; set its owner in the admin first.") from None
        assert row.expires_at is not None
        self.stderr.write(
            f"Token {row.pk} for {login.username} (owner {login.owner}), expires "
            f"{row.expires_at:%Y-%m-%d %H:%M} UTC. It is shown only now:"
        )
        self.stdout.write(token)
