"""runsmtpd's HTTP endpoint: ``/metrics`` for Prometheus, ``/health`` for monitors and balancers.

It runs in threads of the first runsmtpd process (the supervisor, or the only
process), never on an event loop: a scrape reads the metric files every worker
writes (:mod:`kumosubmit.metrics`), and a health check waits on the database in a
thread of its own. So a worker that is busy, stuck or restarting does not make
the endpoint slow or absent, and there is one endpoint per host, not one per worker.

``/health`` answers ``200 ok`` when a new database connection can run
``SELECT 1`` within :data:`HEALTH_TIMEOUT`, and ``503`` when it cannot (or once
runsmtpd is shutting down), so a balancer stops sending clients to a host whose
every AUTH would get 454.
"""

from __future__ import annotations

import glob
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from kumosubmit import db

log = logging.getLogger("kumosubmit.exporter")

#: Seconds /health waits for the database before it answers 503.
HEALTH_TIMEOUT = 2.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class HealthCheck:
    """Runs ``check`` (by default :func:`kumosubmit.db.ping`) for each request, bounded in time.

    Checks run one at a time in one thread; requests that arrive while one is
    running share its answer, so a hung database costs one thread, not one per
    request. Changes between healthy and not are logged.
    """

    def __init__(
        self, check: Callable[[], None] = db.ping, timeout: float = HEALTH_TIMEOUT
    ) -> None:
        self.check = check
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kumosubmit-health")
        self._lock = threading.Lock()
        self._running: Future[None] | None = None
        self._healthy = True

    def problem(self) -> str | None:
        """None if the database answered, else what went wrong (no host names, no secrets)."""
        with self._lock:
            if self._running is None or self._running.done():
                self._running = self._pool.submit(self.check)
            running = self._running
        try:
            running.result(self.timeout)
        except FutureTimeout:
            return self._unhealthy(f"database did not answer within {self.timeout:g}s", None)
        except Exception as error:
            return self._unhealthy(f"database unreachable ({type(error).__name__})", error)
        if not self._healthy:
            log.warning("health: the database answers again")
            self._healthy = True
        return None

    def _unhealthy(self, reason: str, error: Exception | None) -> str:
        if self._healthy:
            # The full error (host, port) goes to the log, not to whoever asks.
            log.error("health: %s: %s", reason, error or "timeout")
            self._healthy = False
        return reason

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr for each scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Exporter:
    """The HTTP endpoint, bound at construction (so a busy port fails before any worker starts)."""

    def __init__(self, host: str, port: int, directory: Path) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        registry = CollectorRegistry()
        _collector_class()(registry, path=str(directory))
        self._metrics_app = make_wsgi_app(registry)
        self.health = HealthCheck()
        self.stopping = False
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]

        class Server(ThreadingMixIn, WSGIServer):
            address_family = family
            daemon_threads = True

        self._server = Server(address[:2], _QuietHandler)
        self._server.set_app(self._app)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kumosubmit-metrics", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close_in_child(self) -> None:
        """In a forked worker: let go of the inherited listening socket."""
        self._server.socket.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self.health.close()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/health":
            problem = "shutting down" if self.stopping else self.health.problem()
            if problem is None:
                return _text(start_response, "200 OK", "ok")
            return _text(start_response, "503 Service Unavailable", problem)
        return _text(start_response, "404 Not Found", "not found: try /metrics or /health")


def _collector_class() -> type:
    """prometheus-client's MultiProcessCollector, but a metric file of 0 bytes is skipped.

    A process creates its file before it sizes it, and a scrape that reads it in
    between fails as a whole (``struct.error``), for every worker's metrics; a
    worker killed in that moment leaves the empty file behind, and every scrape
    after it fails (prometheus/client_python#1199). An empty file holds no value
    yet, so skipping it loses nothing.
    """
    from prometheus_client import multiprocess

    class MultiProcessCollector(multiprocess.MultiProcessCollector):
        def collect(self) -> Iterable[Any]:
            files = [
                path for path in glob.glob(os.path.join(self._path, "*.db")) if _has_size(path)
            ]
            return self.merge(files, accumulate=True)  # type: ignore[no-any-return]

    return MultiProcessCollector


def _has_size(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:  # a dead worker's live gauges, removed meanwhile
        return False


def _text(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = f"{text}\n".encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]
