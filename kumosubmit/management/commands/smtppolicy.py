"""``python manage.py smtppolicy``: would this submission pass? (kumosubmit/hooks/dryrun.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.views.decorators.debug import sensitive_variables

from kumosubmit.hooks.dryrun import dry_run
from kumosubmit.management.commands._passwords import command_stdin


class Command(BaseCommand):
    help = (
        "Run one submission through the same policy handlers a live session runs, in this "
        "process and with no socket, and print each event, its verdict and the reply the "
        "client would get. Nothing is written: no failure counters, audit rows or messages. "
        "Exits 0 if the message would be accepted, 1 if it would be refused."
    )
    requires_migrations_checks = True
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--peer", required=True, metavar="IP", help="The client's address.")
        parser.add_argument("--authc", required=True, metavar="LOGIN", help="Who signs in.")
        parser.add_argument("--authz", default="", metavar="ID", help="Who it acts as.")
        auth = parser.add_mutually_exclusive_group(required=True)
        auth.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the password from standard input (its first line) and run AUTH.",
        )
        auth.add_argument(
            "--token-stdin",
            action="store_true",
            help="Read a token from standard input (its first line) and run AUTH OAUTHBEARER, "
            "naming --authz (or none) as the identity; --authc is then ignored.",
        )
        auth.add_argument(
            "--skip-auth",
            action="store_true",
            help="Take AUTH as passed, as authc (acting as authz), and check the rest.",
        )
        parser.add_argument("--mail-from", required=True, metavar="ADDR", help="'' for <>.")
        parser.add_argument(
            "--rcpt", required=True, action="append", metavar="ADDR", help="Repeatable."
        )
        parser.add_argument(
            "--message",
            type=Path,
            metavar="FILE",
            help="The message (RFC 5322); default: a small one from the envelope.",
        )
        parser.add_argument("--ehlo", default="dry-run.invalid", metavar="NAME")

    @sensitive_variables("password", "token", "secret")
    def handle(self, *args: Any, **options: Any) -> None:
        password = token = None
        if options["password_stdin"] or options["token_stdin"]:
            stream = command_stdin(options)
            secret = (stream.readline() if stream else "").rstrip("\r\n")
            if options["token_stdin"]:
                token = secret
            else:
                password = secret
        message = None
        if options["message"] is not None:
            try:
                message = options["message"].read_bytes()
            except OSError as error:
                raise CommandError(f"Cannot read {options['message']}: {error.strerror}.") from None
        result = asyncio.run(
            dry_run(
                peer=options["peer"],
                authc=options["authc"],
                authz=options["authz"],
                password=password,
                mail_from=options["mail_from"],
                rcpts=options["rcpt"],
                message=message,
                ehlo=options["ehlo"],
                token=token,
            )
        )
        self.stdout.write(result.report())
        if not result.accepted:
            raise SystemExit(1)
