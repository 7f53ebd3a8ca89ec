"""Binding the listeners, tracking live sessions, and draining them on shutdown."""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from kumosubmit.audit.recorder import AuditWriter
from kumosubmit.conf import app_settings
from kumosubmit.credentials import hashing
from kumosubmit.db import close_db
from kumosubmit.looplag import LoopLagMonitor
from kumosubmit.protocol import replies, tls
from kumosubmit.protocol.budget import MemoryBudget
from kumosubmit.protocol.handler import SubmissionHandler
from kumosubmit.protocol.server import Limits, SubmissionSMTP

log = logging.getLogger("kumosubmit.smtp")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port). Raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class BindError(OSError):
    """A listener could not be bound; says which one."""

    def __init__(self, listener: Listener, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.listener = listener


@dataclass
class ServerState:
    """The live sessions and background tasks of one server (as uvicorn's ServerState)."""

    connections: set[SubmissionSMTP] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    draining: bool = False
    per_address: collections.Counter[str | None] = field(default_factory=collections.Counter)
    #: Message data held in memory by this process's sessions (DATA_MEMORY_BUDGET).
    budget: MemoryBudget = field(default_factory=MemoryBudget)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    audit: AuditWriter = field(init=False)

    def __post_init__(self) -> None:
        self.audit = AuditWriter(self.spawn)

    def admit(self, connection: SubmissionSMTP) -> str | None:
        """Track a new connection; return the 421 to refuse it with, if over a limit."""
        address = connection.meta["peer_address"]
        self.connections.add(connection)
        self.per_address[address] += 1
        if self.draining:
            connection.begin_drain()
        if len(self.connections) > app_settings.MAX_CONNECTIONS:
            return replies.TOO_MANY_CONNECTIONS
        # Behind a balancer the address is the balancer's until the PROXY header names
        # the client (readdress, below).
        if not connection.proxy and self.per_address[address] > app_settings.MAX_CONNECTIONS_PER_IP:
            return replies.TOO_MANY_CONNECTIONS_FROM_YOU
        return None

    def readdress(self, connection: SubmissionSMTP, old: str | None, new: str) -> str | None:
        """Count a proxied connection under its real client; return a 421 if over the limit."""
        self.per_address[old] -= 1
        if not self.per_address[old]:
            del self.per_address[old]
        self.per_address[new] += 1
        if self.per_address[new] > app_settings.MAX_CONNECTIONS_PER_IP:
            return replies.TOO_MANY_CONNECTIONS_FROM_YOU
        return None

    def discard(self, connection: SubmissionSMTP) -> None:
        if connection not in self.connections:
            return
        self.connections.remove(connection)
        address = connection.meta["peer_address"]
        self.per_address[address] -= 1
        if not self.per_address[address]:
            del self.per_address[address]
        self._changed.set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run background work (audit writes) that shutdown waits for."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until no session is open; False if ``seconds`` passed first."""
        return await self.wait_until(0, seconds)

    async def wait_until(self, at_most: int, seconds: float) -> bool:
        """Wait until at most ``at_most`` sessions are open; False on timeout."""

        async def fewer() -> None:
            while len(self.connections) > at_most:
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(fewer(), seconds)
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    implicit_tls: bool
    #: Expects a PROXY protocol header (v1 or v2) from a trusted balancer first.
    proxy: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        kind = "implicit TLS" if self.implicit_tls else "STARTTLS"
        return f"{host}:{self.port} ({kind}{', PROXY' if self.proxy else ''})"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or networks (``10.0.0.5``, ``10.0.0.0/24``, ``::1``); ValueError if bad."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


#: Connections the kernel queues for a listener before our accept() takes them.
BACKLOG = 1024


@dataclass
class BoundListener:
    """A listener's sockets, bound and listening (shared by every worker process)."""

    listener: Listener
    sockets: list[socket.socket]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def bind(listeners: Iterable[Listener]) -> list[BoundListener]:
    """Bind and listen on every listener, all or none (:class:`BindError` names the one)."""
    bound: list[BoundListener] = []
    try:
        for listener in listeners:
            try:
                bound.append(BoundListener(listener, _bind_sockets(listener)))
            except OSError as error:
                raise BindError(listener, error) from error
    except BaseException:
        for item in bound:
            item.close()
        raise
    return bound


def _bind_sockets(listener: Listener) -> list[socket.socket]:
    # As asyncio's create_server does: every address the host name resolves to.
    infos = socket.getaddrinfo(
        listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class SubmissionServer:
    """All listeners of one process, sharing one handler, TLS context and state."""

    def __init__(
        self,
        listeners: Iterable[Listener],
        tls_context: ssl.SSLContext,
        *,
        hostname: str | None = None,
        trusted_proxies: Iterable[str] | None = None,
    ) -> None:
        self.listeners = list(listeners)
        self.tls_context = tls_context
        # aiosmtpd would call getfqdn() (a DNS lookup) for every connection.
        self.hostname = hostname or app_settings.HOSTNAME or socket.getfqdn()
        # The balancers whose PROXY headers are believed (TRUSTED_PROXIES).
        self.trusted_proxies = parse_networks(trusted_proxies or app_settings.TRUSTED_PROXIES)
        self.handler = SubmissionHandler()
        self.loop_lag = LoopLagMonitor()
        self.state = ServerState()
        self._servers: list[asyncio.Server] = []

    def _factory(self, listener: Listener) -> SubmissionSMTP:
        implicit_tls = listener.implicit_tls
        return SubmissionSMTP(
            self.handler,
            state=self.state,
            implicit_tls=implicit_tls,
            trusted_proxies=self.trusted_proxies if listener.proxy else None,
            proxy_protocol_timeout=app_settings.PROXY_TIMEOUT if listener.proxy else None,
            # On an implicit-TLS listener there is nothing to STARTTLS into.
            tls_context=None if implicit_tls else self.tls_context,
            hostname=self.hostname,
            ident="ESMTP kumosubmit",
            data_size_limit=app_settings.MAX_MESSAGE_SIZE,
            limits=Limits.from_settings(),
        )

    def _protocol(
        self, loop: asyncio.AbstractEventLoop, listener: Listener
    ) -> asyncio.BaseProtocol:
        session = self._factory(listener)
        if not listener.implicit_tls:
            return session
        # What create_server(ssl=...) would do, but with a small receive buffer
        # (tls.SessionSSLProtocol); the session starts once the handshake is done.
        return tls.server_protocol(loop, session, self.tls_context)

    async def start(self, bound: list[BoundListener] | None = None) -> None:
        """Serve on ``bound`` sockets (bound here if not given) and get argon2 ready."""
        if bound is None:
            bound = bind(self.listeners)
        await hashing.awarm_up()
        self.loop_lag.start()
        loop = asyncio.get_running_loop()
        try:
            for item in bound:
                listener = item.listener
                for sock in item.sockets:
                    server = await loop.create_server(
                        functools.partial(self._protocol, loop, listener),
                        sock=sock,
                        backlog=BACKLOG,
                    )
                    self._servers.append(server)
        except BaseException:
            await self._close_servers()
            raise

    async def _close_servers(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let sessions finish for up to ``grace`` seconds, then close."""
        await self._close_servers()
        log.info("stopped listening (pid %d)", os.getpid())
        self.state.draining = True
        open_sessions = list(self.state.connections)
        for connection in open_sessions:
            connection.begin_drain()
        if open_sessions:
            log.info("waiting up to %ss for %d session(s) to finish", grace, len(open_sessions))
        if not await self.state.wait_idle(grace):
            log.warning("closing %d session(s) still open", len(self.state.connections))
            for connection in list(self.state.connections):
                connection.close_for_shutdown()
            # A TLS close waits for the client's close_notify; don't wait for long.
            if not await self.state.wait_idle(2):
                for connection in list(self.state.connections):
                    connection.abort()
                await self.state.wait_idle(2)
        if self.state.tasks:
            await asyncio.gather(*self.state.tasks, return_exceptions=True)
        await self.loop_lag.stop()
        log.info(
            "event loop lag: p99 %.1f ms, worst %.1f ms (recent samples)",
            self.loop_lag.p99 * 1000,
            self.loop_lag.worst * 1000,
        )
        await close_db()
