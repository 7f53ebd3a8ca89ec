"""``python manage.py changesmtppassword NAME``: set a new password for a login."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kumosubmit.credentials.models import SmtpLogin, normalize_username
from kumosubmit.management.commands._passwords import add_password_arguments, read_password


class Command(BaseCommand):
    help = (
        "Change an SMTP login's password (this also ends a forced password change). "
        "The new password is asked for twice on the terminal, or read from standard "
        "input with --password-stdin; it must pass AUTH_PASSWORD_VALIDATORS."
    )
    requires_migrations_checks = True
    # call_command(..., stdin=io.StringIO(...)) stands in for standard input.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", metavar="NAME", help="The login (case-insensitive).")
        add_password_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        username = normalize_username(options["username"])
        try:
            login = SmtpLogin.objects.get(username=username)
        except SmtpLogin.DoesNotExist:
            raise CommandError(f"SMTP login {username or '(blank)'} does not exist.") from None

        login.set_password(read_password(options, self.stderr, login))
        login.save(update_fields=SmtpLogin.PASSWORD_FIELDS)
        self.stdout.write(f"Password changed for SMTP login {login.username}.")
