"""Fixtures for the fault, secret, timing and fuzz tests.

- ``lenient_limits``: per-connection limits and brute-force penalties out of the
  way, for tests that make many attempts on purpose (the limits have their own
  tests in test_limits.py and test_protocol.py);
- ``server_db``: the database connection of the live listener's ORM thread, to
  point it elsewhere (a proxy that can be cut) or give it a short lock timeout;
- ``db_proxy``: a TCP proxy on loopback in front of PostgreSQL that can be cut
  (every connection reset, the port closed) and restored on the same port.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections

from kumosubmit.conf import DEFAULTS
from kumosubmit.db import run_db
from tests.live import LiveSMTPServer, free_port

IS_POSTGRES = connection.vendor == "postgresql"


def lenient_kumosubmit(settings: Any) -> dict[str, Any]:
    """KUMOSUBMIT with limits that many deliberate failures will not reach."""
    brute_force = {
        **DEFAULTS["BRUTE_FORCE"],
        # Counting stays on (it is part of what a refusal costs); no delay, no block.
        "DELAY": 0,
        "MAX_DELAY": 0,
        "IP_BLOCK_AFTER": None,
        "LOGIN_BLOCK_AFTER": None,
    }
    return {
        **settings.KUMOSUBMIT,
        "MAX_AUTH_ATTEMPTS": 10_000,
        "MAX_ERRORS": 10_000,
        "MAX_CONNECTIONS_PER_IP": 1_000,  # every test client comes from 127.0.0.1
        "BRUTE_FORCE": brute_force,
    }


@pytest.fixture
def lenient_limits(settings: Any) -> None:
    settings.KUMOSUBMIT = lenient_kumosubmit(settings)


class ServerDatabase:
    """The ORM thread of a live listener (``kumosubmit.db.run_db``) and its connection."""

    def __init__(self, server: LiveSMTPServer) -> None:
        self.server = server
        self._original: dict[str, Any] | None = None

    def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func`` as the listener runs its ORM work: in its database thread."""
        return self.server._run(run_db(func, *args))

    def reconfigure(self, **changes: Any) -> None:
        """Reconnect the listener's connection with these settings_dict changes.

        Only that thread's connection changes; the test's own connection (and
        the shared settings) stay as they were.
        """

        def apply() -> None:
            wrapper = connections[DEFAULT_DB_ALIAS]
            if self._original is None:
                self._original = wrapper.settings_dict
            wrapper.close()
            wrapper.settings_dict = {**self._original, **changes}

        self.run(apply)

    def restore(self) -> None:
        if self._original is None:
            return
        original = self._original

        def apply() -> None:
            wrapper = connections[DEFAULT_DB_ALIAS]
            wrapper.close()
            wrapper.settings_dict = original

        self.run(apply)
        self._original = None


@pytest.fixture
def server_db(smtp_server: LiveSMTPServer) -> Iterator[ServerDatabase]:
    database = ServerDatabase(smtp_server)
    yield database
    database.restore()


class TcpProxy:
    """Forwards a loopback port to ``target``. ``cut()`` resets every connection and
    closes the port (the database is unreachable); ``restore()`` listens again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.accepted = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def start(self) -> None:
        self._thread.start()
        self.restore()

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def stop(self) -> None:
        try:
            self._call(self._shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    async def _listen(self) -> None:
        assert self._server is None
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(
            self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.sleep(0)

    async def _shutdown(self) -> None:
        await self._cut()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


@pytest.fixture
def db_proxy(server_db: ServerDatabase) -> Iterator[TcpProxy]:
    """The listener's database connection, through a proxy the test can cut (PostgreSQL)."""
    if not IS_POSTGRES:
        pytest.skip("a network path to cut needs PostgreSQL")
    settings = connection.settings_dict
    proxy = TcpProxy((settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432)))
    proxy.start()
    try:
        server_db.reconfigure(HOST="127.0.0.1", PORT=str(proxy.port))
        yield proxy
        server_db.restore()
    finally:
        proxy.stop()
