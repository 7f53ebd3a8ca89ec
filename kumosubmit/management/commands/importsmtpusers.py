"""``manage.py importsmtpusers FILE --format dovecot|csv``: logins with their existing hashes.

Users keep their passwords: each login is stored with the hash it had (see
:func:`kumosubmit.credentials.hashing.import_hash` for the schemes), verified
with it at AUTH, and upgraded to argon2id on its first good login.

- ``dovecot``: a Dovecot passwd-file, ``user:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]``;
  blank lines and ``#`` comments are ignored; a ``nologin`` extra field imports
  the login inactive.
- ``csv``: a header row naming ``username`` and ``hash`` (also ``password``),
  and optionally ``active`` (yes/no, true/false, 1/0) and ``owner`` (a site
  user's username).

A line that cannot be imported is reported with its number and why (never with
its password field), and the rest go on. A login that exists already, or comes
twice, is skipped. ``{PLAIN}`` passwords are refused unless ``--allow-plain``;
then they are hashed with argon2id on the way in. On a terminal a progress bar
shows; at the end one line sums up. The exit status is 1 if any line was refused.
"""

from __future__ import annotations

import csv
import io
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError, transaction
from django.db.models import Model
from django.views.decorators.debug import sensitive_variables

from kumosubmit.credentials.hashing import UnusableHash, import_hash
from kumosubmit.credentials.models import SmtpLogin, normalize_username

USERNAME_MAX_LENGTH = SmtpLogin._meta.get_field("username").max_length
#: Logins written per transaction.
BATCH_SIZE = 500
#: Spaces, control characters and the passwd-file separator cannot be in a login.
_BAD_NAME = re.compile(r"[\s:\x00-\x1f\x7f]")
_TRUE = {"", "1", "y", "yes", "true", "t", "on", "active"}
_FALSE = {"0", "n", "no", "false", "f", "off", "inactive"}


class LineError(ValueError):
    """Why one line is refused (the message never holds its password field)."""


@dataclass
class Entry:
    """One line of the file, parsed (the hash not yet checked)."""

    line: int
    username: str
    password_field: str
    active: bool = True
    owner: str | None = None


class Progress:
    """A one-line progress bar on a terminal; silent anywhere else."""

    WIDTH = 30

    def __init__(self, stream: TextIO, total: int, enabled: bool) -> None:
        self.stream = stream
        self.total = max(total, 1)
        self.enabled = enabled
        self.shown_at = 0.0

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.shown_at < 0.1:
            return
        self.shown_at = now
        filled = self.WIDTH * done // self.total
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        percent = 100 * done // self.total
        self.stream.write(f"\r\x1b[KImporting [{bar}] {done}/{self.total} lines {percent}%")
        self.stream.flush()

    def clear(self) -> None:
        """Make room for a message (the bar is drawn again on the next update)."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.shown_at = 0.0

    def finish(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            self.stream.write("\n")
            self.stream.flush()


class Command(BaseCommand):
    help = (
        "Import SMTP logins with their existing password hashes from a Dovecot "
        "passwd-file or a CSV file ({ARGON2ID}, {ARGON2I}, {BLF-CRYPT}, "
        "{SHA512-CRYPT}, {SHA256-CRYPT}); each is upgraded to argon2id on its "
        "first good login."
    )
    requires_migrations_checks = True
    # call_command(..., stdin=io.StringIO(...)) stands in for standard input.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", metavar="FILE", help="The file to read; - for standard input.")
        parser.add_argument(
            "--format",
            choices=["dovecot", "csv"],
            default="dovecot",
            help="dovecot: a passwd-file (user:{SCHEME}hash:...); csv: a header row "
            "with username and hash, optionally active and owner. Default: dovecot.",
        )
        parser.add_argument(
            "--allow-plain",
            action="store_true",
            help="Accept {PLAIN} (cleartext) passwords and hash them with argon2id; "
            "without it such lines are refused.",
        )
        parser.add_argument(
            "--owner",
            metavar="DJANGO_USERNAME",
            help="Link every imported login to this site user (a CSV owner column wins).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check every line and report, but save nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        text = self._read(options["file"], options)
        parse = parse_csv if options["format"] == "csv" else parse_dovecot
        entries = list(parse(text))  # cheap: the hashes are checked one by one below
        stream = self.stderr._out
        self.progress = progress = Progress(stream, len(entries), enabled=_isatty(stream))
        importer = Importer(
            self,
            allow_plain=options["allow_plain"],
            default_owner=options["owner"],
            dry_run=options["dry_run"],
        )
        if options["owner"] is not None and importer.owner(options["owner"]) is None:
            raise CommandError(f"There is no Django user {options['owner']!r}.")
        importer.load_existing([entry.username for entry in entries if isinstance(entry, Entry)])
        for item in entries:
            if isinstance(item, LineError):
                importer.refuse(item.args[0], str(item.args[1]))
            else:
                importer.add(item)
            progress.update(importer.lines_done)
        importer.flush()
        progress.finish(importer.lines_done)
        verb = "Would import" if options["dry_run"] else "Imported"
        self.stdout.write(
            f"{verb} {importer.imported} login{'s' if importer.imported != 1 else ''}, "
            f"skipped {importer.skipped}, refused {importer.refused} "
            f"(of {importer.lines_done} line{'s' if importer.lines_done != 1 else ''})."
        )
        if importer.refused:
            raise CommandError(
                f"{importer.refused} line{'s were' if importer.refused != 1 else ' was'} "
                "refused (see above); the other lines were handled."
            )

    def _read(self, name: str, options: dict[str, Any]) -> str:
        if name == "-":
            stream = options.get("stdin") or sys.stdin
            data = stream.read()
            return data[1:] if data.startswith("\ufeff") else data
        try:
            return Path(name).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise CommandError(f"{name}: no such file.") from None
        except UnicodeDecodeError as error:
            raise CommandError(f"{name} is not UTF-8 text ({error.reason}).") from None
        except OSError as error:
            raise CommandError(f"Cannot read {name}: {error.strerror}.") from None

    def report(self, message: str) -> None:
        """A line about one entry, on stderr, without tearing the progress bar."""
        self.progress.clear()
        self.stderr.write(message)


def _isatty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _valid_username(raw: str) -> str:
    username = normalize_username(raw)
    if not username:
        raise LineError("the login name is empty")
    if len(username) > USERNAME_MAX_LENGTH:
        raise LineError(f"the login name is longer than {USERNAME_MAX_LENGTH} characters")
    if _BAD_NAME.search(username):
        raise LineError("the login name has a space, a colon or a control character")
    return username


def parse_dovecot(text: str) -> Iterator[Entry | LineError]:
    """The entries of a passwd-file (``LineError(number, reason)`` for a bad line)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 2:
            yield LineError(number, "not user:password")
            continue
        try:
            username = _valid_username(fields[0])
        except LineError as error:
            yield LineError(number, error.args[0])
            continue
        extra = fields[7].split() if len(fields) > 7 else []
        active = not any(item == "nologin" or item.startswith("nologin=") for item in extra)
        yield Entry(number, username, fields[1], active=active)


def parse_csv(text: str) -> Iterator[Entry | LineError]:
    """The entries of a CSV file with a header row."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as error:
        yield LineError(1, f"unreadable CSV header ({error})")
        return
    columns = {name: index for index, name in enumerate(header)}
    hash_column = next(
        (name for name in ("hash", "password_hash", "password") if name in columns), None
    )
    if "username" not in columns or hash_column is None:
        yield LineError(1, "the header must name the columns username and hash")
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield LineError(reader.line_num, f"unreadable CSV ({error})")
            return
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue

        def cell(name: str, row: list[str] = row) -> str:
            index = columns.get(name)
            return row[index] if index is not None and index < len(row) else ""

        try:
            username = _valid_username(cell("username"))
            active_text = cell("active").strip().lower()
            if active_text not in _TRUE | _FALSE:
                raise LineError(f"active is {active_text!r}, not yes or no")
        except LineError as error:
            yield LineError(number, error.args[0])
            continue
        owner = cell("owner").strip() or None
        yield Entry(number, username, cell(hash_column), active_text in _TRUE, owner)


class Importer:
    """Checks each entry and saves the good ones in batches."""

    def __init__(
        self, command: Command, *, allow_plain: bool, default_owner: str | None, dry_run: bool
    ) -> None:
        self.command = command
        self.allow_plain = allow_plain
        self.default_owner = default_owner
        self.dry_run = dry_run
        self.imported = self.skipped = self.refused = self.lines_done = 0
        self.seen: set[str] = set()
        self.existing: set[str] = set()
        self.pending: list[tuple[int, SmtpLogin]] = []
        self._owners: dict[str, Model | None] = {}

    def owner(self, username: str) -> Model | None:
        if username not in self._owners:
            user_model = get_user_model()
            try:
                self._owners[username] = user_model._default_manager.get_by_natural_key(username)
            except user_model.DoesNotExist:
                self._owners[username] = None
        return self._owners[username]

    def refuse(self, line: int, reason: str) -> None:
        self.refused += 1
        self.lines_done += 1
        self.command.report(f"line {line}: refused: {reason}")

    def skip(self, line: int, reason: str) -> None:
        self.skipped += 1
        self.lines_done += 1
        self.command.report(f"line {line}: skipped: {reason}")

    def load_existing(self, usernames: list[str]) -> None:
        """Which of these logins exist already (so each line is reported in its turn)."""
        for start in range(0, len(usernames), BATCH_SIZE):
            self.existing.update(
                SmtpLogin.objects.filter(
                    username__in=usernames[start : start + BATCH_SIZE]
                ).values_list("username", flat=True)
            )

    @sensitive_variables()
    def add(self, entry: Entry) -> None:
        if entry.username in self.existing:
            self.skip(entry.line, f"{entry.username} exists already")
            return
        if entry.username in self.seen:
            self.skip(entry.line, f"{entry.username} came earlier in the file")
            return
        try:
            stored = import_hash(entry.password_field, allow_plain=self.allow_plain)
        except UnusableHash as error:
            self.refuse(entry.line, f"{entry.username}: {error}")
            return
        owner_name = entry.owner or self.default_owner
        owner = self.owner(owner_name) if owner_name else None
        if owner_name and owner is None:
            self.refuse(entry.line, f"{entry.username}: there is no Django user {owner_name!r}")
            return
        self.seen.add(entry.username)
        login = SmtpLogin(
            username=entry.username, password_hash=stored, is_active=entry.active, owner=owner
        )
        self.pending.append((entry.line, login))
        if len(self.pending) >= BATCH_SIZE:
            self.flush()

    def flush(self) -> None:
        """Save the pending logins; one made meanwhile by someone else is skipped."""
        new, self.pending = self.pending, []
        if not new:
            return
        if not self.dry_run:
            try:
                with transaction.atomic():
                    SmtpLogin.objects.bulk_create([login for _, login in new])
            except IntegrityError:
                # Someone made one of them meanwhile: save one by one to tell which.
                new = self._save_each(new)
        self.imported += len(new)
        self.lines_done += len(new)

    def _save_each(self, new: list[tuple[int, SmtpLogin]]) -> list[tuple[int, SmtpLogin]]:
        saved = []
        for line, login in new:
            login.pk = None
            try:
                with transaction.atomic():
                    login.save()
            except IntegrityError:
                self.skip(line, f"{login.username} exists already")
            else:
                saved.append((line, login))
        return saved
