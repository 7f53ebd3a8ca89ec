"""``python manage.py runsmtpd``: run the SMTP submission listener."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import resource
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

import kumosubmit
from kumosubmit import metrics
from kumosubmit.certs import ensure_self_signed
from kumosubmit.checks import checking_runsmtpd
from kumosubmit.conf import DEFAULT_LISTEN, app_settings
from kumosubmit.credentials import hashing
from kumosubmit.exporter import Exporter
from kumosubmit.protocol.listener import (
    BindError,
    BoundListener,
    Listener,
    SubmissionServer,
    bind,
    parse_address,
)
from kumosubmit.protocol.tls import server_context
from kumosubmit.relay.handoff import Handoff
from kumosubmit.supervisor import Supervisor


class Command(BaseCommand):
    help = "Run the SMTP submission server (STARTTLS and implicit-TLS listeners)."

    # Checks run in handle(), after the options are known, as runserver does.
    requires_system_checks: list[str] = []
    _exporter: Exporter | None = None

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--listen",
            action="append",
            metavar="HOST:PORT",
            help="A STARTTLS listener (repeatable). Default: KUMOSUBMIT['LISTEN']; with no "
            "listener of any kind given, 127.0.0.1:2587.",
        )
        parser.add_argument(
            "--implicit-tls",
            action="append",
            metavar="HOST:PORT",
            help="A listener that speaks TLS from the first byte, as on port 465 "
            "(repeatable). Default: KUMOSUBMIT['IMPLICIT_TLS'], none.",
        )
        parser.add_argument(
            "--proxy-listen",
            action="append",
            metavar="HOST:PORT",
            help="A STARTTLS listener behind a TCP balancer that sends a PROXY protocol "
            "header (v1 or v2) first (repeatable). Default: KUMOSUBMIT['PROXY_LISTEN'].",
        )
        parser.add_argument(
            "--trusted-proxy",
            action="append",
            metavar="ADDRESS[/BITS]",
            help="A balancer whose PROXY headers are believed (repeatable). "
            "Default: KUMOSUBMIT['TRUSTED_PROXIES'].",
        )
        parser.add_argument("--tls-cert", metavar="PATH", help="Certificate chain (PEM).")
        parser.add_argument("--tls-key", metavar="PATH", help="Private key (PEM).")
        parser.add_argument("--hostname", help="The name in the greeting and Received headers.")
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            metavar="SECONDS",
            help="How long open sessions may finish after SIGTERM/SIGINT. "
            "Default: KUMOSUBMIT['SHUTDOWN_TIMEOUT'], 30.",
        )
        parser.add_argument(
            "--workers",
            type=int,
            metavar="N",
            help="Listener processes sharing the ports (default: KUMOSUBMIT['WORKERS'], "
            "or the number of CPUs). A worker that dies is restarted.",
        )
        parser.add_argument(
            "--metrics-listen",
            metavar="HOST:PORT",
            help="Serve Prometheus /metrics and a /health check over HTTP here. "
            "Default: KUMOSUBMIT['METRICS_LISTEN'], none.",
        )
        parser.add_argument("--skip-checks", action="store_true", help="Skip the system checks.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["workers"] is not None and options["workers"] < 1:
            raise CommandError("--workers must be 1 or more.")
        workers = options["workers"] or app_settings.WORKERS or os.cpu_count() or 1
        if not options["skip_checks"]:
            with checking_runsmtpd(workers):  # W053 counts these workers
                self.check(display_num_errors=False)
        self._refuse_unapplied_migrations()

        # The checks opened connections in this thread; the server uses its own.
        connections.close_all()

        listeners = self._listeners(options)
        context = self._tls_context(options)
        self._raise_open_file_limit()
        try:
            server = SubmissionServer(
                listeners,
                context,
                hostname=options["hostname"],
                trusted_proxies=options["trusted_proxy"],
            )
        except ValueError as error:
            raise CommandError(f"--trusted-proxy: {error}") from error
        timeout = options["shutdown_timeout"]
        grace = float(app_settings.SHUTDOWN_TIMEOUT if timeout is None else timeout)
        hashing.share_cores_with(workers)
        metrics_address = self._metrics_address(options)
        try:
            bound = bind(listeners)
        except BindError as error:
            raise CommandError(_bind_error(error.listener, error)) from error
        try:
            self._exporter = self._start_exporter(metrics_address)
        except BaseException:
            for item in bound:
                item.close()
            raise

        def say_listening() -> None:  # once the signal handlers are in place
            if self._exporter is not None:
                self.stdout.write(
                    f"Metrics on {self._exporter.url}/metrics, health check on "
                    f"{self._exporter.url}/health."
                )
            self.stdout.write(
                f"kumosubmit {kumosubmit.__version__} listening on "
                + ", ".join(str(listener) for listener in listeners)
                + f" as {server.hostname} with {workers} worker process(es). "
                "Quit with CONTROL-C."
            )
            self.stdout.flush()

        def worker(index: int) -> None:
            if self._exporter is not None:  # served by the supervisor, not by each worker
                self._exporter.close_in_child()
            # One hand-off relay per host is enough (and all SQLite allows).
            asyncio.run(self._serve(server, bound, grace, relay=index == 0))

        # What is loaded by now (Django, the app, the settings) lives as long as the process.
        # Frozen, the cyclic garbage collector no longer walks it at each full pass (and
        # thousands of new sessions make those passes come often), and forked workers
        # share it untouched.
        gc.freeze()
        # Full collections walk every object of every open session (0.3 s at 5,000 idle
        # sessions, measured, finding nothing to free): at Python's default they come each
        # time the heap grows by a quarter, so opening thousands of sessions held the loop
        # again and again. After 1,000 younger collections instead of 10; garbage that
        # lives long enough to wait for them is rare (a session's objects mostly die young).
        gc.set_threshold(700, 10, 1000)
        try:
            if workers == 1:
                asyncio.run(self._serve(server, bound, grace, on_ready=say_listening))
            else:
                supervisor = Supervisor(
                    worker,
                    workers,
                    grace=grace,
                    on_start=say_listening,
                    on_stop=lambda: self._stop_listening(bound),
                )
                supervisor.run()
        finally:
            for item in bound:
                item.close()
            if self._exporter is not None:
                self._exporter.stop()
                metrics.disable()
        self.stdout.write("Stopped.")

    def _metrics_address(self, options: dict[str, Any]) -> tuple[str, int] | None:
        text = options["metrics_listen"] or app_settings.METRICS_LISTEN
        if not text:
            return None
        try:
            return parse_address(text)
        except ValueError as error:
            raise CommandError(f"--metrics-listen: {error}") from error

    def _start_exporter(self, address: tuple[str, int] | None) -> Exporter | None:
        """Bind the metrics endpoint and start measuring (before any worker is forked)."""
        if address is None:
            return None
        directory = metrics.enable()
        try:
            exporter = Exporter(*address, directory)
        except OSError as error:
            metrics.disable()
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            where = f"{host}:{address[1]} (metrics)"
            raise CommandError(_bind_error(where, error)) from error
        exporter.start()
        return exporter

    def _raise_open_file_limit(self) -> None:
        """Raise the soft RLIMIT_NOFILE to the hard one: each session is a descriptor.

        Many systems start processes with a soft limit of 1024, far below the
        thousands of idle sessions a worker can hold (MAX_CONNECTIONS); the hard
        limit is what an unprivileged process may raise it to.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError) as error:
                self.stderr.write(f"Could not raise the open files limit to {hard}: {error}")
            else:
                self.stdout.write(f"Open files limit raised from {soft} to {hard}.")
                soft = hard
        # Each worker needs a descriptor per session, and some for listeners and the DB.
        if soft != resource.RLIM_INFINITY and soft < app_settings.MAX_CONNECTIONS + 100:
            self.stderr.write(
                f"The open files limit ({soft}) is below MAX_CONNECTIONS "
                f"({app_settings.MAX_CONNECTIONS}) + 100: raise it (ulimit -n, or "
                "LimitNOFILE= in the systemd unit), or some sessions will be refused."
            )

    def _refuse_unapplied_migrations(self) -> None:
        executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if plan:
            apps = sorted({migration.app_label for migration, _ in plan})
            raise CommandError(
                f"{len(plan)} unapplied migration(s) for app(s): {', '.join(apps)}. "
                "Run 'python manage.py migrate' first."
            )

    def _listeners(self, options: dict[str, Any]) -> list[Listener]:
        starttls = options["listen"] or app_settings.LISTEN
        implicit = options["implicit_tls"] or app_settings.IMPLICIT_TLS
        proxied = options["proxy_listen"] or app_settings.PROXY_LISTEN
        if not (starttls or implicit or proxied):
            # Only then: --proxy-listen or --implicit-tls alone binds just what it names.
            starttls = DEFAULT_LISTEN
        listeners = []
        for addresses, is_implicit, proxy in (
            (starttls, False, False),
            (implicit, True, False),
            (proxied, False, True),
        ):
            for address in addresses:
                try:
                    host, port = parse_address(address)
                except ValueError as error:
                    raise CommandError(str(error)) from error
                listeners.append(Listener(host, port, is_implicit, proxy))
        if proxied and not (options["trusted_proxy"] or app_settings.TRUSTED_PROXIES):
            raise CommandError("A PROXY listener needs --trusted-proxy (or TRUSTED_PROXIES).")
        return listeners

    def _tls_context(self, options: dict[str, Any]) -> ssl.SSLContext:
        cert = options["tls_cert"] or app_settings.TLS_CERT
        key = options["tls_key"] or app_settings.TLS_KEY
        if bool(cert) != bool(key):
            raise CommandError("--tls-cert and --tls-key go together.")
        if not cert:
            hostname = options["hostname"] or app_settings.HOSTNAME or socket.getfqdn()
            cert, key, made = ensure_self_signed(app_settings.data_dir, hostname)
            verb = "Made" if made else "Using"
            self.stdout.write(
                f"{verb} a self-signed certificate for {hostname}: {cert} "
                "(set KUMOSUBMIT['TLS_CERT'] and ['TLS_KEY'], or --tls-cert/--tls-key, "
                "for a real one)."
            )
        try:
            return server_context(cert, key)
        except (OSError, ssl.SSLError) as error:
            raise CommandError(
                f"Cannot load the TLS certificate {cert} / key {key}: {error}"
            ) from error

    def _say_shutting_down(self) -> None:
        if self._exporter is not None:
            self._exporter.stopping = True  # /health: 503 from now on
        self.stdout.write("Shutting down: no new connections; letting open sessions finish.")
        self.stdout.flush()

    def _stop_listening(self, bound: list[BoundListener]) -> None:
        # The parent's copies of the sockets would keep the ports accepting into a
        # backlog nobody reads; the workers close theirs as they begin to drain.
        self._say_shutting_down()
        for item in bound:
            item.close()

    async def _serve(
        self,
        server: SubmissionServer,
        bound: list[BoundListener],
        grace: float,
        *,
        on_ready: Callable[[], None] | None = None,
        relay: bool = True,
    ) -> None:
        """Serve until SIGTERM or SIGINT, then drain (the only process, or one worker)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            if on_ready is not None:
                on_ready()
            await server.start(bound)
            # With RELAY["HANDOFF"], deliver right after each commit, in this process.
            handoff = Handoff() if relay else None
            if handoff is not None:
                await handoff.start()
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        if on_ready is not None:  # the only process: say it here, not in a supervisor
            self._say_shutting_down()
        await server.shutdown(grace)  # closes this process's listening sockets first
        if handoff is not None:
            await handoff.stop(grace)


def _bind_error(where: object, error: OSError) -> str:
    messages = {
        errno.EADDRINUSE: "is already in use",
        errno.EACCES: "needs privileges this process lacks (ports below 1024)",
        errno.EADDRNOTAVAIL: "is not an address of this host",
    }
    reason = messages.get(error.errno or 0, error.strerror or str(error))
    return f"Cannot listen on {where}: the address {reason}."
