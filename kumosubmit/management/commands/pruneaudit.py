"""``python manage.py pruneaudit``: delete old audit rows and spent failure counters."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from kumosubmit.audit.retention import delete_in_batches, expired_records
from kumosubmit.conf import app_settings
from kumosubmit.credentials.lanes import stale_rows
from kumosubmit.credentials.throttle import stale_counters
from kumosubmit.management.commands._retention import add_retention_arguments, retention_age
from kumosubmit.web import throttle as web_throttle


class Command(BaseCommand):
    help = (
        "Delete connection audit rows older than --age seconds (default "
        "KUMOSUBMIT['AUDIT_RETENTION'], 90 days) and the failed-AUTH counters that no "
        "longer delay or block anyone, the spray marks of past windows and the known "
        "login and network pairs past AUTH_LANES['KNOWN_PAIR_TTL']. Run it daily."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_retention_arguments(
            parser,
            kept="the audit rows of connections started",
            default="KUMOSUBMIT['AUDIT_RETENTION'] (90 days)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        age = retention_age(options, app_settings.AUDIT_RETENTION)
        records = expired_records(age) if age is not None else None
        # Each side's counters by its own rules (WEB_BRUTE_FORCE may keep them longer).
        counters = (
            stale_counters().exclude(kind__in=web_throttle.KINDS) | web_throttle.stale_counters()
        )
        marks, pairs = stale_rows()
        if options["dry_run"]:
            if records is not None:
                self.stdout.write(f"Would delete {records.count()} audit row(s).")
            self.stdout.write(f"Would delete {counters.count()} spent failure counter(s).")
            self.stdout.write(
                f"Would delete {marks.count()} spray mark(s) and {pairs.count()} expired "
                "known pair(s)."
            )
            return
        if records is None:
            self.stdout.write("AUDIT_RETENTION is None: the audit log is kept.")
        else:
            self.stdout.write(f"Deleted {delete_in_batches(records)} audit row(s).")
        self.stdout.write(f"Deleted {delete_in_batches(counters)} spent failure counter(s).")
        self.stdout.write(
            f"Deleted {delete_in_batches(marks)} spray mark(s) and {delete_in_batches(pairs)} "
            "expired known pair(s)."
        )
