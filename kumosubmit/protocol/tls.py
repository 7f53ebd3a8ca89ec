"""The server's TLS context, and the TLS protocol each session runs on."""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from pathlib import Path


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server context with TLS 1.2 as the floor and OpenSSL's default ciphers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    # Submission clients do not present certificates; asking would only confuse them.
    context.verify_mode = ssl.CERT_NONE
    return context


#: Bytes each TLS session reads from its socket at a time (asyncio's default: 256 KiB).
RECEIVE_BUFFER = 32 * 1024


class SessionSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a 32 KiB receive buffer per connection, not 256 KiB.

    CPython 3.11's ``SSLProtocol`` allocates (and zero-fills) a ``max_size``
    bytearray per connection: the buffer the socket is read into before the
    bytes are copied into OpenSSL's incoming ``MemoryBIO``. It need not hold a
    whole TLS record (at most 16 KiB of data plus 256 bytes in TLS 1.3, 2 KiB
    in TLS 1.2): the BIO gathers partial records, and decrypted data is read
    out with ``SSLObject.read(max_size)`` in a loop until OpenSSL wants more
    (``_do_read__copied``). So the size only sets how much one ``recv()``
    takes: 32 KiB is two full records per system call, enough for a 20 MB
    upload at full speed, and 10,000 idle sessions hold 320 MB of buffers
    instead of 2.5 GB. See docs/security.md, "Memory".
    """

    max_size = RECEIVE_BUFFER


def server_protocol(
    loop: asyncio.AbstractEventLoop,
    app_protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    waiter: asyncio.Future[None] | None = None,
) -> SessionSSLProtocol:
    """The server side of TLS for ``app_protocol`` (its ``connection_made`` follows the
    handshake); as ``loop.create_server(ssl=...)`` and ``loop.start_tls`` would build it."""
    # typeshed wants a waiter; asyncio's own create_server(ssl=...) passes None.
    return SessionSSLProtocol(loop, app_protocol, context, waiter, server_side=True)  # type: ignore[arg-type]
