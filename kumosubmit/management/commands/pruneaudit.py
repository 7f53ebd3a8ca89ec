"""``python manage.py pruneaudit``: delete old audit rows and spent failure counters."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kumosubmit.audit.retention import delete_in_batches, expired_records
from kumosubmit.conf import app_settings
from kumosubmit.credentials.throttle import stale_counters


class Command(BaseCommand):
    help = (
        "Delete connection audit rows older than --age seconds (default "
        "KUMOSUBMIT['AUDIT_RETENTION'], 90 days) and the failed-AUTH counters that no "
        "longer delay or block anyone. Run it daily."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--age",
            type=float,
            metavar="SECONDS",
            help="Keep the audit rows of connections started within this many seconds. "
            "Default: KUMOSUBMIT['AUDIT_RETENTION'].",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only say how many rows it would delete."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        age = options["age"]
        if age is None:
            age = app_settings.AUDIT_RETENTION
        if age is not None and age < 0:
            raise CommandError("--age must be 0 or more.")
        records = expired_records(age) if age is not None else None
        counters = stale_counters()
        if options["dry_run"]:
            if records is not None:
                self.stdout.write(f"Would delete {records.count()} audit row(s).")
            self.stdout.write(f"Would delete {counters.count()} spent failure counter(s).")
            return
        if records is None:
            self.stdout.write("AUDIT_RETENTION is None: the audit log is kept.")
        else:
            self.stdout.write(f"Deleted {delete_in_batches(records)} audit row(s).")
        self.stdout.write(f"Deleted {delete_in_batches(counters)} spent failure counter(s).")
