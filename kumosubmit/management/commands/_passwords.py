"""Reading a new password for the SMTP login commands: typed twice, or piped in.

One place for the prompt and the stdin logic, shared by ``createsmtpuser`` and
``changesmtppassword``. The password is never echoed, printed or logged. It
must pass Django's ``AUTH_PASSWORD_VALIDATORS``, as in the admin and on the
self-service pages: a refused one is asked for again on a terminal, and ends
the command when it was piped in.
(Django skips modules whose names start with an underscore when it looks for
commands, so this is not a command itself.)
"""

from __future__ import annotations

import getpass
import sys
import warnings
from collections.abc import Mapping
from typing import Any, TextIO

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser, OutputWrapper
from django.views.decorators.debug import sensitive_variables

MAX_TRIES = 3


def add_password_arguments(parser: CommandParser) -> None:
    """The ``--password-stdin`` option both commands share."""
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="Read the password from standard input (its first line, without the "
        "line break) instead of asking for it twice on the terminal. For scripts.",
    )


def command_stdin(options: Mapping[str, Any]) -> TextIO | None:
    """The stream to read from: ``call_command(..., stdin=...)``, or the real one."""
    return options.get("stdin") or sys.stdin


@sensitive_variables()
def password_problems(password: str, login: Any = None) -> list[str]:
    """What AUTH_PASSWORD_VALIDATORS say against ``password`` (none: it may be used).

    ``login`` (an SmtpLogin, saved or not) lets UserAttributeSimilarityValidator
    compare the password with the login's name.
    """
    try:
        password_validation.validate_password(password, login)
    except ValidationError as error:
        return list(error.messages)
    return []


@sensitive_variables()
def read_password(options: Mapping[str, Any], stderr: OutputWrapper, login: Any = None) -> str:
    """The new password, from stdin with ``--password-stdin``, else typed twice."""
    stdin = command_stdin(options)
    if options.get("password_stdin"):
        if _isatty(stdin):
            # Reading a terminal line by line would show the password as it is typed.
            raise CommandError(
                "--password-stdin reads a pipe or a file, but standard input is a "
                "terminal; leave it out to be asked for the password."
            )
        password = password_from_stream(stdin)
        if problems := password_problems(password, login):
            raise CommandError("The password was refused: " + " ".join(problems))
        return password
    if not _isatty(stdin):
        raise CommandError(
            "Not running in a terminal, so the password cannot be asked for: "
            "pipe it in with --password-stdin."
        )
    return prompt_password(stderr, login)


def password_from_stream(stream: TextIO | None) -> str:
    """The first line of ``stream`` without its ``\\n`` or ``\\r\\n``; never empty."""
    line = stream.readline() if stream is not None else ""
    if line.endswith("\r\n"):
        line = line[:-2]
    elif line.endswith("\n"):
        line = line[:-1]
    if not line:
        raise CommandError("The password is empty; refusing to set an empty password.")
    return line


@sensitive_variables()
def prompt_password(stderr: OutputWrapper, login: Any = None) -> str:
    """Ask twice without echo; up to :data:`MAX_TRIES` rounds, as ``changepassword`` does."""
    for _ in range(MAX_TRIES):
        first = _ask_once("Password: ")
        if not first:
            stderr.write("The password cannot be empty. Please try again.")
            continue
        if first != _ask_once("Password (again): "):
            stderr.write("Passwords do not match. Please try again.")
            continue
        if problems := password_problems(first, login):
            for problem in problems:
                stderr.write(problem)
            stderr.write("Please choose another password.")
            continue
        return first
    raise CommandError(f"Aborting after {MAX_TRIES} attempts; the password was not set.")


def _ask_once(prompt: str) -> str:
    try:
        with warnings.catch_warnings():
            # getpass falls back to echoing the password when it cannot turn echo off;
            # fail instead of showing it on the screen.
            warnings.simplefilter("error", getpass.GetPassWarning)
            return getpass.getpass(prompt)
    except getpass.GetPassWarning:
        raise CommandError(
            "Cannot turn off echo on this terminal; pipe the password in with --password-stdin."
        ) from None
    except (EOFError, KeyboardInterrupt):
        raise CommandError("Operation cancelled; the password was not set.") from None


def _isatty(stream: TextIO | None) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
