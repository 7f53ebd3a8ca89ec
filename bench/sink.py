"""A plain aiosmtpd server that stores nothing: the ceiling of the protocol stack.

Run from the repository root:

    .venv/bin/python bench/sink.py --port 2588 [--processes 2]

STARTTLS (a self-signed P-256 certificate, as runsmtpd makes), AUTH only after
TLS accepting any credentials without hashing them, and ``250`` for every
message without keeping it. It does what aiosmtpd does on its own and nothing
else, so kumosubmit's figures beside it show what our own work costs.
``--processes N`` forks N processes that accept on one shared socket, as
``runsmtpd --workers N`` does. It prints ``ready`` once listening, and stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult

ROOT = Path(__file__).resolve().parent.parent


class Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK (discarded)"


def accept_anyone(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
    return AuthResult(success=True)


def tls_context(directory: Path) -> ssl.SSLContext:
    sys.path.insert(0, str(ROOT))
    from kumosubmit.certs import make_self_signed  # cryptography only, no Django

    cert_pem, key_pem = make_self_signed("sink.bench")
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def serve(sock: socket.socket, context: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    handler = Handler()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="sink.bench",
            tls_context=context,
            require_starttls=False,
            auth_require_tls=True,
            auth_required=True,
            authenticator=accept_anyone,
        ),
        sock=sock,
        backlog=1024,
    )
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2588)
    parser.add_argument("--processes", type=int, default=1)
    options = parser.parse_args(argv)
    # aiosmtpd warns "Session.login_data is deprecated" on every AUTH.
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="kumosubmit-sink-") as tmp:
        context = tls_context(Path(tmp))
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto does, and
    # aiosmtpd writes a multi-line reply line by line (Nagle would add 40 ms to each EHLO).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((options.host, options.port))
    sock.listen(1024)
    sock.setblocking(False)
    children = []
    for _ in range(max(0, options.processes - 1)):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(sock, context))
            os._exit(0)
        children.append(pid)
    print("ready", flush=True)
    try:
        asyncio.run(serve(sock, context))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
