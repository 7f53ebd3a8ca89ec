"""The relay's settings: ``KUMOSUBMIT["RELAY"]`` over its defaults, plus command options."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from kumosubmit.conf import DEFAULTS, app_settings

TLS_MODES = ("starttls", "implicit", "none")


class RelayConfigError(ValueError):
    """A relay setting or option that cannot work (the message says which and why)."""


def relay_settings() -> dict[str, Any]:
    """``KUMOSUBMIT["RELAY"]`` merged over the defaults, read at call time."""
    user = app_settings.RELAY
    return {**DEFAULTS["RELAY"], **(user if isinstance(user, dict) else {})}


def parse_upstream(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[v6]:PORT"`` for IPv6) as ``(host, port)``."""
    if not isinstance(value, str) or not value.strip():
        raise RelayConfigError(f"{value!r} is not 'HOST:PORT'.")
    try:
        parts = urlsplit(f"//{value.strip()}")
        host, port = parts.hostname, parts.port
    except ValueError as error:
        raise RelayConfigError(f"{value!r} is not 'HOST:PORT': {error}.") from error
    if not host or port is None or port == 0 or parts.path or parts.username:
        raise RelayConfigError(f"{value!r} is not 'HOST:PORT'.")
    return host, port


def is_this_host(host: str) -> bool:
    """Whether ``host`` names this machine over loopback (where plaintext SMTP is acceptable)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class RelayConfig:
    """Everything a relay worker needs to know, checked once at start."""

    host: str
    port: int
    tls: str = "starttls"
    verify_certificate: bool = True
    ca_file: str | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    helo_name: str = "localhost"
    workers: int = 4
    messages_per_connection: int = 100
    timeout: float = 60
    data_timeout: float = 600
    retry_delay: float = 60
    max_retry_delay: float = 3600
    max_age: float = 5 * 86400
    lease: float = 120
    poll_interval: float = 1.0
    retention: float | None = 7 * 86400

    @classmethod
    def from_settings(
        cls,
        *,
        upstream: str | None = None,
        tls: str | None = None,
        workers: int | None = None,
        ca_file: str | None = None,
    ) -> RelayConfig:
        """The settings with the command's options over them; RelayConfigError if unusable."""
        values = relay_settings()
        address = upstream or values["UPSTREAM"]
        if not address:
            raise RelayConfigError(
                "No upstream MTA: set KUMOSUBMIT['RELAY']['UPSTREAM'] or --upstream HOST:PORT."
            )
        host, port = parse_upstream(address)
        config = cls(
            host=host,
            port=port,
            tls=tls or values["TLS"],
            verify_certificate=bool(values["VERIFY_CERTIFICATE"]),
            ca_file=ca_file or values["CA_FILE"],
            username=values["USERNAME"],
            password=values["PASSWORD"],
            helo_name=values["HELO_NAME"] or app_settings.HOSTNAME or socket.getfqdn(),
            workers=int(workers or values["WORKERS"]),
            messages_per_connection=int(values["MESSAGES_PER_CONNECTION"]),
            timeout=float(values["TIMEOUT"]),
            data_timeout=float(values["DATA_TIMEOUT"]),
            retry_delay=float(values["RETRY_DELAY"]),
            max_retry_delay=float(values["MAX_RETRY_DELAY"]),
            max_age=float(values["MAX_AGE"]),
            lease=float(values["LEASE"]),
            poll_interval=float(values["POLL_INTERVAL"]),
            retention=None if values["RETENTION"] is None else float(values["RETENTION"]),
        )
        config.validate()
        return config

    @property
    def upstream(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def validate(self) -> None:
        """Refuse what would send mail or a password in the clear over a network."""
        if self.tls not in TLS_MODES:
            raise RelayConfigError(f"TLS must be one of {', '.join(TLS_MODES)}, not {self.tls!r}.")
        if self.tls == "none" and not is_this_host(self.host):
            raise RelayConfigError(
                f"TLS 'none' is only for an MTA on this host (a loopback address), "
                f"not {self.host}: use 'starttls' or 'implicit'."
            )
        if bool(self.username) != bool(self.password):
            raise RelayConfigError("USERNAME and PASSWORD go together.")
        if self.workers < 1:
            raise RelayConfigError(f"WORKERS must be 1 or more, not {self.workers}.")

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context (verifying by default), or None for plaintext."""
        if self.tls == "none":
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.verify_certificate:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context
