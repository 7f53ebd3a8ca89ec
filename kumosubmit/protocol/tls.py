"""The server's TLS context."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server context with TLS 1.2 as the floor and OpenSSL's default ciphers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    # Submission clients do not present certificates; asking would only confuse them.
    context.verify_mode = ssl.CERT_NONE
    return context
