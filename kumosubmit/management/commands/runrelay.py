"""``python manage.py runrelay``: deliver stored messages to the upstream MTA."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

import kumosubmit
from kumosubmit.conf import app_settings
from kumosubmit.db import close_db
from kumosubmit.relay.config import TLS_MODES, RelayConfig, RelayConfigError
from kumosubmit.relay.worker import RelayWorker


class Command(BaseCommand):
    help = (
        "Deliver the stored messages to the upstream MTA over SMTP, with retries, "
        "until stopped (or, with --once, until nothing due is left)."
    )

    requires_system_checks: list[str] = []  # run in handle(), as runsmtpd does

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--upstream",
            metavar="HOST:PORT",
            help="The MTA to deliver to. Default: KUMOSUBMIT['RELAY']['UPSTREAM'].",
        )
        parser.add_argument(
            "--tls",
            choices=TLS_MODES,
            help="STARTTLS (the default), implicit TLS from the first byte, or none "
            "(only for an MTA on this host). Default: KUMOSUBMIT['RELAY']['TLS'].",
        )
        parser.add_argument(
            "--ca-file",
            metavar="PATH",
            help="CA certificates (PEM) to verify the upstream with, instead of the system's.",
        )
        parser.add_argument(
            "--workers",
            type=int,
            metavar="N",
            help="Concurrent upstream connections. Default: KUMOSUBMIT['RELAY']['WORKERS'], 4.",
        )
        parser.add_argument(
            "--once", action="store_true", help="Deliver what is due now, then exit 0."
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            metavar="SECONDS",
            help="How long deliveries in progress may finish after SIGTERM/SIGINT. "
            "Default: KUMOSUBMIT['SHUTDOWN_TIMEOUT'], 30.",
        )
        parser.add_argument("--skip-checks", action="store_true", help="Skip the system checks.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["workers"] is not None and options["workers"] < 1:
            raise CommandError("--workers must be 1 or more.")
        if not options["skip_checks"]:
            self.check(display_num_errors=False)
        try:
            config = RelayConfig.from_settings(
                upstream=options["upstream"],
                tls=options["tls"],
                workers=options["workers"],
                ca_file=options["ca_file"],
            )
        except RelayConfigError as error:
            raise CommandError(str(error)) from error
        self._refuse_unapplied_migrations()
        # The checks opened connections in this thread; the worker uses its own.
        connections.close_all()
        timeout = options["shutdown_timeout"]
        worker = RelayWorker(config)
        worker.shutdown_timeout = float(
            app_settings.SHUTDOWN_TIMEOUT if timeout is None else timeout
        )
        stats = asyncio.run(self._run(worker, once=options["once"]))
        summary = ", ".join(f"{count} {state}" for state, count in sorted(stats.items()))
        self.stdout.write(f"Stopped: {summary or 'nothing was due'}.")

    def _refuse_unapplied_migrations(self) -> None:
        executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if plan:
            apps = sorted({migration.app_label for migration, _ in plan})
            raise CommandError(
                f"{len(plan)} unapplied migration(s) for app(s): {', '.join(apps)}. "
                "Run 'python manage.py migrate' first."
            )

    async def _run(self, worker: RelayWorker, *, once: bool) -> dict[str, int]:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, worker.stop)
        config = worker.config
        self.stdout.write(
            f"kumosubmit {kumosubmit.__version__} relaying to {config.upstream} "
            f"({config.tls}, {config.workers} connection(s)) as worker {worker.name}."
            + ("" if once else " Quit with CONTROL-C.")
        )
        self.stdout.flush()
        try:
            return await worker.run(once=once)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await close_db()
