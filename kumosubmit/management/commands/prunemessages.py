"""``python manage.py prunemessages``: remove the content of delivered messages past retention."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from kumosubmit.management.commands._retention import add_retention_arguments, retention_age
from kumosubmit.relay.config import relay_settings
from kumosubmit.relay.retention import expired_content, remove_expired_content


class Command(BaseCommand):
    help = (
        "Remove the content of messages delivered more than --age seconds ago "
        "(default KUMOSUBMIT['RELAY']['RETENTION']); their rows stay."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_retention_arguments(
            parser,
            kept="the content of messages delivered",
            default="KUMOSUBMIT['RELAY']['RETENTION'] (7 days)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        age = retention_age(options, relay_settings()["RETENTION"])
        if age is None:
            self.stdout.write("RELAY['RETENTION'] is None: delivered content is kept.")
            return
        if options["dry_run"]:
            count = expired_content(age).count()
            self.stdout.write(f"Would remove the content of {count} delivered message(s).")
            return
        count = remove_expired_content(age)
        self.stdout.write(f"Removed the content of {count} delivered message(s).")
