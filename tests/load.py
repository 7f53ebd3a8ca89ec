"""Many authenticated TLS sessions from one asyncio client, held open and idle.

Used by tests/test_memory.py, and runnable by hand against a running
``runsmtpd`` to see what N idle sessions cost it::

    python -m tests.load --port 2587 --sessions 10000 --login alice@example.com \
        --password '...' --cafile var/selfsigned-cert.pem --pid <runsmtpd pid>

Each session does EHLO, STARTTLS (or implicit TLS), EHLO, AUTH PLAIN and then
stays silent until closed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass


class ReplyError(AssertionError):
    """The server answered something other than what the session needed."""


@dataclass
class IdleSession:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def command(self, line: bytes) -> list[bytes]:
        self.writer.write(line + b"\r\n")
        return await read_reply(self.reader)

    async def close(self) -> None:
        """QUIT, or just drop the connection if the server has gone."""
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError, ReplyError):
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(read_reply(self.reader), 5)
        self.writer.transport.abort()


async def read_reply(reader: asyncio.StreamReader) -> list[bytes]:
    """One whole reply (all its lines, without CRLF)."""
    lines = []
    while True:
        line = await reader.readuntil(b"\r\n")
        lines.append(line[:-2])
        if line[3:4] != b"-":
            return lines


async def expect(reader: asyncio.StreamReader, code: bytes) -> list[bytes]:
    reply = await read_reply(reader)
    if not reply[-1].startswith(code):
        raise ReplyError(f"expected {code!r}, got {reply!r}")
    return reply


def plain_response(authc: str, password: str) -> bytes:
    return base64.b64encode(f"\0{authc}\0{password}".encode())


async def open_session(
    host: str,
    port: int,
    context: ssl.SSLContext,
    authc: str,
    password: str,
    *,
    implicit: bool = False,
    server_hostname: str = "localhost",
) -> IdleSession:
    """Connect, get TLS, AUTH PLAIN; return the session, idle after its ``235``."""
    reader, writer = await asyncio.open_connection(
        host,
        port,
        ssl=context if implicit else None,
        server_hostname=server_hostname if implicit else None,
    )
    session = IdleSession(reader, writer)
    try:
        await expect(reader, b"220")
        if not implicit:
            writer.write(b"EHLO load.test\r\nSTARTTLS\r\n")
            await expect(reader, b"250")
            await expect(reader, b"220")
            await writer.start_tls(context, server_hostname=server_hostname)
        writer.write(b"EHLO load.test\r\n")
        await expect(reader, b"250")
        writer.write(b"AUTH PLAIN " + plain_response(authc, password) + b"\r\n")
        await expect(reader, b"235")
    except BaseException:
        writer.transport.abort()
        raise
    return session


@contextlib.asynccontextmanager
async def idle_sessions(
    count: int,
    host: str,
    ports: Iterable[tuple[int, bool]],
    context: ssl.SSLContext,
    authc: str,
    password: str,
    *,
    concurrency: int = 32,
) -> AsyncIterator[list[IdleSession]]:
    """Open ``count`` sessions, spread over ``ports`` ((port, implicit) pairs), and hold them.

    At most ``concurrency`` handshakes and AUTHs are in flight at once. All
    sessions are closed when the block ends.
    """
    targets = list(ports)
    sessions: list[IdleSession] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        port, implicit = targets[index % len(targets)]
        async with gate:
            sessions.append(
                await open_session(host, port, context, authc, password, implicit=implicit)
            )

    try:
        await asyncio.gather(*(one(index) for index in range(count)))
        yield sessions
    finally:
        await asyncio.gather(*(session.close() for session in sessions))


def rss_kib(pid: int | str = "self") -> int:
    """A process's resident set size (VmRSS) in KiB."""
    if pid == "self":
        gc.collect()
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError("no VmRSS")


async def _main(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(cafile=args.cafile)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    before = rss_kib(args.pid) if args.pid else None
    started = time.monotonic()
    async with idle_sessions(
        args.sessions,
        args.host,
        [(args.port, args.implicit)],
        context,
        args.login,
        args.password,
        concurrency=args.concurrency,
    ) as sessions:
        took = time.monotonic() - started
        print(f"{len(sessions)} sessions authenticated and idle in {took:.1f}s")
        if args.pid:
            assert before is not None
            after = rss_kib(args.pid)
            print(
                f"server RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB with "
                f"{len(sessions)} sessions: {(after - before) / len(sessions):.1f} KiB per session"
            )
        started = time.monotonic()
        extra = await open_session(
            args.host, args.port, context, args.login, args.password, implicit=args.implicit
        )
        print(f"one more session: AUTH in {(time.monotonic() - started) * 1000:.0f} ms")
        await extra.close()
        if args.hold:
            await asyncio.sleep(args.hold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2587)
    parser.add_argument("--implicit", action="store_true", help="implicit TLS, not STARTTLS")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--login", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--cafile", help="CA (or self-signed certificate) to verify with")
    parser.add_argument("--insecure", action="store_true", help="do not verify the server")
    parser.add_argument("--pid", type=int, help="the server process, to report its RSS")
    parser.add_argument("--hold", type=float, default=0, help="seconds to keep them open")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
