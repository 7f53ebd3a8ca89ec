"""A real kumosubmit listener on loopback, in a thread of the test process."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kumosubmit.protocol.listener import Listener, SubmissionServer, bind
from kumosubmit.protocol.tls import server_context
from tests.tlsutil import TestPKI


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it; we then bind it ourselves)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LiveSMTPServer:
    """Runs :class:`SubmissionServer` on its own event loop in a thread."""

    def __init__(
        self, pki: TestPKI, host: str = "127.0.0.1", *, trusted_proxies: list[str] | None = None
    ) -> None:
        self.pki = pki
        self.host = host
        # Bound here on port 0, so the kernel picks ports nobody else can take meanwhile.
        self.bound = bind(
            [
                Listener(host, 0, implicit_tls=False),
                Listener(host, 0, implicit_tls=True),
                # A STARTTLS listener that expects a PROXY header from ``trusted_proxies``.
                Listener(host, 0, implicit_tls=False, proxy=True),
            ]
        )
        self.starttls_port, self.implicit_port, self.proxy_port = (
            item.sockets[0].getsockname()[1] for item in self.bound
        )
        self.server = SubmissionServer(
            [item.listener for item in self.bound],
            server_context(pki.server_cert, pki.server_key),
            trusted_proxies=trusted_proxies or ["127.0.0.1"],
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self._run(self.server.start(self.bound))

    def stop(self, grace: float = 5) -> None:
        try:
            self._run(self.server.shutdown(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def settle(self) -> None:
        """Wait until every session has ended and its audit row is written."""

        async def idle() -> None:
            assert await self.server.state.wait_idle(10), "sessions did not end"
            while self.server.state.tasks:
                await asyncio.gather(*self.server.state.tasks, return_exceptions=True)

        self._run(idle())

    def settle_connections(self, count: int) -> None:
        """Wait until at most ``count`` sessions are open (and audit rows are written)."""

        async def wait() -> None:
            state = self.server.state
            assert await state.wait_until(count, 10), "sessions did not end"
            while state.tasks:
                await asyncio.gather(*state.tasks, return_exceptions=True)

        self._run(wait())

    # -- clients --------------------------------------------------------------------

    def plain(self) -> smtplib.SMTP:
        """A client on the STARTTLS port, after EHLO, still in plaintext."""
        client = smtplib.SMTP(
            self.host, self.starttls_port, local_hostname="client.test", timeout=10
        )
        client.ehlo()
        return client

    def starttls(self) -> smtplib.SMTP:
        """A client after STARTTLS and a second EHLO, certificate verified."""
        client = self.plain()
        client.starttls(context=self.pki.client_context())
        client.ehlo()
        return client

    def implicit(self) -> smtplib.SMTP_SSL:
        """A client on the implicit-TLS port, after EHLO."""
        client = smtplib.SMTP_SSL(
            self.host,
            self.implicit_port,
            local_hostname="client.test",
            context=self.pki.client_context(),
            timeout=10,
        )
        client.ehlo()
        return client


def plain_blob(authz: str, authc: str, password: str) -> str:
    """The base64 AUTH PLAIN initial response."""
    return base64.b64encode(f"{authz}\0{authc}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@contextmanager
def quitting(client: smtplib.SMTP) -> Iterator[smtplib.SMTP]:
    try:
        yield client
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError, ssl.SSLError):
            client.close()


class RawClient:
    """Line-level SMTP over a real socket, for what smtplib will not send (pipelining, junk)."""

    def __init__(self, server: LiveSMTPServer, *, implicit: bool = False) -> None:
        self.server = server
        port = server.implicit_port if implicit else server.starttls_port
        self.sock: socket.socket = socket.create_connection((server.host, port), timeout=10)
        if implicit:
            self.sock = server.pki.client_context().wrap_socket(
                self.sock, server_hostname="localhost"
            )
        self.reader = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> list[bytes]:
        """One whole reply (all its lines, without CRLF); [] if the server closed."""
        lines = []
        while True:
            line = self.reader.readline()
            if not line:
                return lines
            assert line.endswith(b"\r\n"), line
            lines.append(line[:-2])
            if line[3:4] != b"-":
                return lines

    def command(self, line: bytes) -> list[bytes]:
        self.send(line + b"\r\n")
        return self.reply()

    def starttls(self) -> None:
        assert self.command(b"EHLO client.test")[0].startswith(b"250")
        assert self.command(b"STARTTLS")[0].startswith(b"220")
        self.start_tls()

    def start_tls(self) -> None:
        self.reader.close()
        self.sock = self.server.pki.client_context().wrap_socket(
            self.sock, server_hostname="localhost"
        )
        self.reader = self.sock.makefile("rb")

    def login(self, authc: str, password: str) -> None:
        assert self.command(b"EHLO client.test")[-1].startswith(b"250 ")
        reply = self.command(b"AUTH PLAIN " + plain_blob("", authc, password).encode())
        assert reply[0].startswith(b"235"), reply

    def closed(self) -> bool:
        """Whether the server has closed the connection (no more bytes will come)."""
        return self.reader.read() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
