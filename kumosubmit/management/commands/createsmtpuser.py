"""``python manage.py createsmtpuser NAME``: add a login mail clients can AUTH with."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError, transaction
from django.db.models import Model

from kumosubmit.credentials.models import AuthorizedIdentity, SmtpLogin, normalize_username
from kumosubmit.management.commands._limits import add_limit_arguments, apply_limits, describe
from kumosubmit.management.commands._passwords import add_password_arguments, read_password

USERNAME_MAX_LENGTH = SmtpLogin._meta.get_field("username").max_length


class Command(BaseCommand):
    help = (
        "Create an SMTP login. The password is asked for twice on the terminal, "
        "or read from standard input with --password-stdin; it must pass the "
        "site's password validators (AUTH_PASSWORD_VALIDATORS)."
    )
    requires_migrations_checks = True
    # call_command(..., stdin=io.StringIO(...)) stands in for standard input.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", metavar="NAME", help="The login (stored in lowercase).")
        add_password_arguments(parser)
        parser.add_argument(
            "--inactive",
            action="store_true",
            help="Create the login disabled (AUTH is refused until it is activated).",
        )
        parser.add_argument(
            "--act-as",
            action="append",
            default=[],
            metavar="IDENTITY",
            help="Another identity the login may authorize as, e.g. a shared mailbox (repeatable).",
        )
        parser.add_argument(
            "--owner",
            metavar="DJANGO_USERNAME",
            help="The site user this login belongs to.",
        )
        add_limit_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        username = _valid_name(options["username"], "login")
        identities = sorted({_valid_name(i, "--act-as identity") for i in options["act_as"]})
        if SmtpLogin.objects.filter(username=username).exists():
            raise CommandError(f"SMTP login {username} already exists.")
        owner = _owner(options["owner"]) if options["owner"] is not None else None

        login = SmtpLogin(username=username, is_active=not options["inactive"], owner=owner)
        limits = apply_limits(login, options)
        login.set_password(read_password(options, self.stderr, login))
        try:
            with transaction.atomic():
                login.save()
                for identity in identities:
                    AuthorizedIdentity.objects.create(login=login, identity=identity)
        except IntegrityError:
            if SmtpLogin.objects.filter(username=username).exists():
                # Created by someone else since the check above.
                raise CommandError(f"SMTP login {username} already exists.") from None
            raise
        self.stdout.write(f"Created SMTP login {login.username}.")
        if limits:
            self.stdout.write(f"Sending limits: {describe(login)}.")


def _valid_name(value: str, what: str) -> str:
    name = normalize_username(value)
    if not name:
        raise CommandError(f"The {what} cannot be blank.")
    if len(name) > USERNAME_MAX_LENGTH:
        raise CommandError(f"The {what} is longer than {USERNAME_MAX_LENGTH} characters.")
    return name


def _owner(django_username: str) -> Model:
    user_model = get_user_model()
    try:
        return user_model._default_manager.get_by_natural_key(django_username)
    except user_model.DoesNotExist:
        raise CommandError(f"There is no Django user {django_username!r}.") from None
