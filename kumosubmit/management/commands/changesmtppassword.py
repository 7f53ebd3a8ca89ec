"""``python manage.py changesmtppassword NAME``: set a new password for a login."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kumosubmit.credentials.models import SmtpLogin, normalize_username
from kumosubmit.management.commands._limits import add_limit_arguments, apply_limits, describe
from kumosubmit.management.commands._passwords import add_password_arguments, read_password


class Command(BaseCommand):
    help = (
        "Change an SMTP login's password (this also ends a forced password change). "
        "The new password is asked for twice on the terminal, or read from standard "
        "input with --password-stdin; it must pass AUTH_PASSWORD_VALIDATORS. "
        "--message-limits and --recipient-limits set the login's sending limits too "
        "(with --keep-password, only them)."
    )
    requires_migrations_checks = True
    # call_command(..., stdin=io.StringIO(...)) stands in for standard input.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", metavar="NAME", help="The login (case-insensitive).")
        add_password_arguments(parser)
        add_limit_arguments(parser)
        parser.add_argument(
            "--keep-password",
            action="store_true",
            help="Change only the sending limits given, not the password.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username = normalize_username(options["username"])
        try:
            login = SmtpLogin.objects.get(username=username)
        except SmtpLogin.DoesNotExist:
            raise CommandError(f"SMTP login {username or '(blank)'} does not exist.") from None

        limits = apply_limits(login, options)
        if options["keep_password"]:
            if not limits:
                raise CommandError("--keep-password: give --message-limits or --recipient-limits.")
            login.save(update_fields=limits)
        else:
            login.set_password(read_password(options, self.stderr, login))
            login.save(update_fields=[*SmtpLogin.PASSWORD_FIELDS, *limits])
            self.stdout.write(f"Password changed for SMTP login {login.username}.")
        if limits:
            self.stdout.write(f"Sending limits of {login.username}: {describe(login)}.")
