"""The SMTP protocol object of one connection: aiosmtpd's ``SMTP``, made fit for submission.

What this subclass adds or mends (see shared/aiosmtpd-notes.md):

- a :class:`~kumosubmit.meta.ConnectionMeta` per connection, the audit row
  and one log line when it ends;
- implicit TLS (RFC 8314) counts as TLS for AUTH (aiosmtpd only knows STARTTLS);
- ``STARTTLS`` inside TLS and a second ``AUTH`` get ``503 5.5.1``;
- every reply carries an enhanced status code (ENHANCEDSTATUSCODES);
- per-connection command size limits (aiosmtpd shares one dict among all);
- a graceful drain: on shutdown an idle session is closed with ``421`` at
  once, a session inside a transaction when it ends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosmtpd.smtp
from aiosmtpd.proxy_protocol import V2_CMD, ProxyData
from aiosmtpd.smtp import MISSING, SMTP, Session, TLSSetupException

from kumosubmit import metrics
from kumosubmit.conf import app_settings
from kumosubmit.meta import ConnectionMeta
from kumosubmit.protocol import replies

if TYPE_CHECKING:
    from kumosubmit.protocol.listener import ServerState

log = logging.getLogger("kumosubmit.smtp")

# aiosmtpd hangs up with "502" after 5 unknown commands (a module constant); our
# MAX_ERRORS counts every error reply, unknown commands included, and answers 421.
aiosmtpd.smtp.BOGUS_LIMIT = 2**31

#: Seconds a closing connection may wait for the client's TLS close_notify.
CLOSE_LINGER = 5.0


@dataclass(frozen=True)
class Limits:
    """The per-connection limits, read from the settings when the connection opens."""

    max_errors: int
    max_auth_attempts: int
    max_recipients: int
    max_messages: int
    idle_timeout: float
    data_timeout: float
    bare_line_endings: str

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            max_errors=app_settings.MAX_ERRORS,
            max_auth_attempts=app_settings.MAX_AUTH_ATTEMPTS,
            max_recipients=app_settings.MAX_RECIPIENTS,
            max_messages=app_settings.MAX_MESSAGES_PER_CONNECTION,
            idle_timeout=app_settings.IDLE_TIMEOUT,
            data_timeout=app_settings.DATA_TIMEOUT,
            bare_line_endings=app_settings.BARE_LINE_ENDINGS,
        )


class SubmissionSession(Session):
    """aiosmtpd's Session without the deprecation warning it logs on every AUTH."""

    login_data: Any = None  # type: ignore[assignment]


class SubmissionSMTP(SMTP):
    def __init__(
        self,
        handler: Any,
        *,
        state: ServerState,
        implicit_tls: bool,
        limits: Limits,
        trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None,
        **kwargs: Any,
    ) -> None:
        # aiosmtpd keeps these limits in a dict shared by every connection and grows it on
        # each EHLO; give each connection its own.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.state = state
        self.implicit_tls = implicit_tls
        self.limits = limits
        self.trusted_proxies = trusted_proxies
        self.meta: ConnectionMeta = None  # type: ignore[assignment]  # set in connection_made
        self.refusal: str | None = None  # a 421 to send instead of the greeting
        self.draining = False
        self._busy = False
        self._raw_replies = False
        self._errors = 0
        self._data_deadline: float | None = None
        self._starttls_protocol: Any = None
        self._started = time.monotonic()
        self._finished = False
        super().__init__(
            handler,
            auth_required=True,
            auth_require_tls=True,
            timeout=limits.idle_timeout,
            # AUTH attempts per connection; the 4th gets "421 4.7.0" and a close.
            command_call_limit={"AUTH": limits.max_auth_attempts, "*": 2**31},
            **kwargs,
        )
        self._smtp_methods = {
            name: self._tracked(method) for name, method in self._smtp_methods.items()
        }

    # aiosmtpd decides "is this session encrypted?" by this attribute, which only
    # STARTTLS sets; on an implicit-TLS listener every session is.
    @property  # type: ignore[override]
    def _tls_protocol(self) -> Any:
        return self._starttls_protocol or self.implicit_tls

    @_tls_protocol.setter
    def _tls_protocol(self, value: Any) -> None:
        self._starttls_protocol = value

    @property
    def proxy(self) -> bool:
        """Whether this connection comes through a balancer speaking PROXY protocol."""
        return self.trusted_proxies is not None

    def accept_proxy(self, data: ProxyData) -> bool:
        """Believe a PROXY header only from a trusted balancer; then the client is its source.

        From then on conn_meta, the audit row, the per-address limit and the
        brute-force counters all see the real client; the balancer is kept as
        ``proxy_address``.
        """
        balancer = self.meta["peer_address"]
        assert self.trusted_proxies is not None
        if balancer is None or not any(
            ipaddress.ip_address(balancer) in net for net in self.trusted_proxies
        ):
            log.warning(
                "conn %s: PROXY header from untrusted %s; closed", self.meta["conn_id"], balancer
            )
            self.meta["proxy_error"] = "untrusted"
            return False
        self.meta["proxy_address"] = balancer
        self.meta["proxy_port"] = self.meta["peer_port"]
        self.meta["proxy_version"] = data.version
        if data.command == V2_CMD.LOCAL or data.src_addr is None:
            return True  # the balancer's own health check: it is the peer
        client = str(data.src_addr)
        self.meta["peer_address"] = client
        self.meta["peer_port"] = data.src_port
        refusal = self.state.readdress(self, balancer, client)
        if refusal:
            self.meta["refused"] = refusal
            self.close_with(refusal)
            return False
        return True

    @property
    def on_tls(self) -> bool:
        return bool(self._tls_protocol)

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def _create_session(self) -> Session:
        return SubmissionSession(self.loop)

    # -- connection lifecycle ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.meta is None
        if first:
            peer = transport.get_extra_info("peername")
            local = transport.get_extra_info("sockname")
            self.meta = ConnectionMeta(
                peer=tuple(peer[:2]) if peer else None,
                local=tuple(local[:2]) if local else None,
                listener="implicit-tls" if self.implicit_tls else "starttls",
            )
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:  # implicit TLS, or STARTTLS just completed
            cipher = ssl_object.cipher()
            self.meta.set_tls(ssl_object.version(), cipher[0] if cipher else None)
        if first:
            metrics.connection_opened(self.meta["listener"], proxy=self.proxy)
            self.refusal = self.state.admit(self)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self._finished:  # aiosmtpd calls this twice after a failed TLS handshake
            return
        self._finished = True
        metrics.connection_closed(self.meta["listener"], proxy=self.proxy)
        self.state.discard(self)
        meta = self.meta
        last = meta.last_auth or {}
        log.info(
            "conn %s peer=%s:%s listener=%s tls=%s ehlo=%s auth=%s authc=%s "
            "messages=%d bytes=%d duration=%.3fs",
            meta["conn_id"],
            meta["peer_address"],
            meta["peer_port"],
            meta["listener"],
            meta["tls_version"] or "-",
            meta["ehlo_name"] or "-",
            last.get("outcome", "none"),
            last.get("authc") or "-",
            meta["messages_accepted"],
            meta["bytes_accepted"],
            time.monotonic() - self._started,
        )
        self.state.audit.submit(meta)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A client that cannot complete STARTTLS; aiosmtpd closes the connection.
            self.meta["tls_error"] = str(error.__cause__ or error)
            log.info(
                "conn %s: TLS handshake failed: %s", self.meta["conn_id"], self.meta["tls_error"]
            )
            return replies.INTERNAL_ERROR
        # aiosmtpd's default tells the client the exception text (host names,
        # secrets) with a permanent 500; say nothing and invite a retry.
        log.error("conn %s: session error", self.meta["conn_id"], exc_info=error)
        return replies.INTERNAL_ERROR

    async def _handle_client(self) -> None:
        if self.refusal:
            log.info("conn %s refused: %s", self.meta["conn_id"], self.refusal)
            self.meta["refused"] = self.refusal
            self.close_with(self.refusal)
            return
        await super()._handle_client()

    def _timeout_cb(self) -> None:
        log.info("conn %s timed out", self.meta["conn_id"])
        self.meta["timed_out"] = True
        self.close_with(replies.TIMEOUT)

    def data_received(self, data: bytes) -> None:
        # aiosmtpd restarts its idle timer only per command, so a long upload would be
        # cut after IDLE_TIMEOUT. During DATA, silence is what counts, up to DATA_TIMEOUT.
        if self._data_deadline is not None:
            left = self._data_deadline - self.loop.time()
            self._reset_timeout(max(0.001, min(self.limits.idle_timeout, left)))
        super().data_received(data)

    async def smtp_DATA(self, arg: str) -> None:
        self._data_deadline = self.loop.time() + self.limits.data_timeout
        try:
            await super().smtp_DATA(arg)
        finally:
            self._data_deadline = None

    async def challenge_auth(
        self, challenge: str | bytes, encode_to_b64: bool = True, log_client_response: bool = False
    ) -> Any:
        """Send a 334 challenge and return the client's decoded answer, or MISSING.

        aiosmtpd's own version answers an over-long line with 500 and the exception
        text and then reads the rest of that line as a command (a desync). Here it is
        skipped and answered once. The answer is never logged.
        """
        data = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (base64.b64encode(data) if encode_to_b64 else data))
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            await self._discard_line()
            await self.push(replies.AUTH_LINE_TOO_LONG)
            return MISSING
        except asyncio.IncompleteReadError:
            return MISSING  # the client hung up
        blob = line.strip()
        if blob == b"*":  # RFC 4954 section 4: the client cancels
            await self.push(replies.AUTH_CANCELLED)
            return MISSING
        try:
            return base64.b64decode(blob, validate=True)
        except binascii.Error:
            await self.push(replies.AUTH_MALFORMED)
            return MISSING

    async def _discard_line(self) -> None:
        """Skip the rest of an over-long line, however long, in limit-sized pieces."""
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as error:
                await self._reader.read(error.consumed)

    # -- replies -----------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = replies.printable(status)
            if not self._raw_replies:
                status = replies.with_enhanced_code(status)
        code = status[:3] if isinstance(status, str) else status[:3].decode("ascii", "replace")
        if code == "421":  # RFC 5321 section 3.8: the server closes after a 421
            self.close_with(status if isinstance(status, str) else status.decode())
            return
        if code.startswith("5"):
            # MAX_ERRORS error replies; the next error is answered 421 and a close.
            if self._errors >= self.limits.max_errors:
                log.info("conn %s: too many errors, closing", self.meta["conn_id"])
                self.close_with(replies.TOO_MANY_ERRORS)
                return
            self._errors += 1
        metrics.reply_sent(status)
        await super().push(status)

    async def _raw(self, command: Callable[[str], Awaitable[None]], arg: str) -> None:
        # RFC 2034: the greeting and the EHLO/HELO replies carry no enhanced codes.
        self._raw_replies = True
        try:
            await command(arg)
        finally:
            self._raw_replies = False

    async def smtp_EHLO(self, hostname: str) -> None:
        self.command_size_limits.clear()  # aiosmtpd adds to them on every EHLO
        await self._raw(super().smtp_EHLO, hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        await self._raw(super().smtp_HELO, hostname)

    # -- commands aiosmtpd gets wrong --------------------------------------------------

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.on_tls:
            await self.push(replies.TLS_ALREADY)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if self.session is not None and self.session.authenticated:
            await self.push(replies.AUTH_ALREADY)
            return
        await super().smtp_AUTH(arg)

    # -- graceful shutdown ------------------------------------------------------------

    def _tracked(
        self, method: Callable[[str], Awaitable[None]]
    ) -> Callable[[str], Awaitable[None]]:
        """Wrap a command so a draining server can tell idle sessions from busy ones."""

        @functools.wraps(method)
        async def run(arg: str) -> None:
            self._busy = True
            try:
                await method(arg)
            finally:
                self._busy = False
            if self.draining and not self.in_transaction:
                self.close_for_shutdown()

        return run

    def begin_drain(self) -> None:
        """Stop this session as soon as no transaction is in progress."""
        self.draining = True
        if not self._busy and not self.in_transaction:
            self.close_for_shutdown()

    def close_for_shutdown(self) -> None:
        self.close_with(replies.SHUTTING_DOWN)

    def close_with(self, reply: str) -> None:
        """Send a last reply (a 421) and close, without waiting on the client.

        The command loop is cancelled too: commands the client pipelined after
        this point are never answered.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        metrics.reply_sent(reply)
        transport.write(f"{reply}\r\n".encode())  # type: ignore[attr-defined]
        transport.close()
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        # A TLS close waits for the client's close_notify; a client that never sends
        # it would hold its slot for asyncio's 30 s.
        self.loop.call_later(CLOSE_LINGER, self._abort_unless_finished)

    def _abort_unless_finished(self) -> None:
        if not self._finished:
            self.abort()

    def abort(self) -> None:
        """Drop the connection now, even if the client never answers TLS close_notify."""
        for transport in (self.transport, self._original_transport):
            if transport is not None:
                transport.abort()  # type: ignore[attr-defined]
