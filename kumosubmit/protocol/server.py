"""The SMTP protocol object of one connection: aiosmtpd's ``SMTP``, made fit for submission.

What this subclass adds or mends (see shared/aiosmtpd-notes.md):

- a :class:`~kumosubmit.meta.ConnectionMeta` per connection, the audit row
  and one log line when it ends;
- implicit TLS (RFC 8314) counts as TLS for AUTH (aiosmtpd only knows STARTTLS);
- ``STARTTLS`` inside TLS and a second ``AUTH`` get ``503 5.5.1``;
- every reply carries an enhanced status code (ENHANCEDSTATUSCODES);
- per-connection command size limits (aiosmtpd shares one dict among all);
- a graceful drain: on shutdown an idle session is closed with ``421`` at
  once, a session inside a transaction when it ends;
- STARTTLS on a TLS protocol with a small receive buffer (protocol/tls.py);
- DATA read in bulk into one buffer, held against DATA_MEMORY_BUDGET
  (protocol/data.py, protocol/budget.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import collections.abc
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import aiosmtpd.smtp
from aiosmtpd.proxy_protocol import V2_CMD, ProxyData
from aiosmtpd.smtp import MISSING, SMTP, Session, TLSSetupException

from kumosubmit import addresses, metrics
from kumosubmit.conf import app_settings
from kumosubmit.hooks import events
from kumosubmit.meta import ConnectionMeta
from kumosubmit.protocol import replies, tls
from kumosubmit.protocol.budget import Reservation
from kumosubmit.protocol.data import DataReader, declared_size

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
    idle_timeout: float
    data_timeout: float
    bare_line_endings: str

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            max_errors=app_settings.MAX_ERRORS,
            max_auth_attempts=app_settings.MAX_AUTH_ATTEMPTS,
            idle_timeout=app_settings.IDLE_TIMEOUT,
            data_timeout=app_settings.DATA_TIMEOUT,
            bare_line_endings=app_settings.BARE_LINE_ENDINGS,
        )


def _may_become(code: int, new_code: int) -> bool:
    """Whether a reply's code may be rewritten to ``new_code``: only where the session's
    state does not depend on it. A success or an intermediate reply (the 250 after DATA:
    the message is stored; a 354 or 334: the client sends next) keeps its class, a
    failure stays a failure, and a 421 (the connection closes) stays a 421."""
    if code == 421 or new_code == code:
        return new_code == code
    if code < 400:
        return new_code // 100 == code // 100
    return new_code >= 400


class SubmissionSession(Session):
    """aiosmtpd's Session without the deprecation warning it logs on every AUTH."""

    login_data: Any = None


class _Commands(collections.abc.Mapping[str, Callable[[str], Awaitable[None]]]):
    """One session's command table (aiosmtpd's ``_smtp_methods``), wrapped as looked up.

    aiosmtpd keeps a dict of bound methods per connection; a dict of wrappers for
    the drain bookkeeping (``_tracked``) on top cost 5 KB a session, 50 MB for
    10,000 idle ones. This holds two references and wraps a command when it runs.
    """

    __slots__ = ("_names", "_session")

    def __init__(self, session: SubmissionSMTP, names: tuple[str, ...]) -> None:
        self._session = session
        self._names = names

    def __getitem__(self, name: str) -> Callable[[str], Awaitable[None]]:
        if name not in self._names:
            raise KeyError(name)
        return self._session._tracked(name, getattr(self._session, "smtp_" + name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


_dispatch_names: dict[tuple[type, tuple[str, ...]], list[str]] = {}


def dispatch_names(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    """The attributes of ``cls`` named with one of ``prefixes``: what aiosmtpd looks up.

    For the ``__dir__`` of sessions and handlers (see ``SubmissionSMTP.__dir__``);
    listed once per class.
    """
    names = _dispatch_names.get((cls, prefixes))
    if names is None:
        names = [name for name in dir(cls) if name.startswith(prefixes)]
        _dispatch_names[(cls, prefixes)] = names
    return names


#: RFC 4954 section 4: an AUTH command or response line may be 12288 octets long, room
#: for the tokens of OAUTHBEARER and XOAUTH2 (a signed JWT is often 1-3 KB). Other
#: commands keep aiosmtpd's 512; DATA is read by protocol/data.py, without this limit.
AUTH_LINE_LIMIT = 12288


class SubmissionSMTP(SMTP):
    # The reader's line limit, which aiosmtpd's 1001 would set below AUTH_LINE_LIMIT.
    line_length_limit = AUTH_LINE_LIMIT + 2

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
        self.command_size_limits["AUTH"] = AUTH_LINE_LIMIT
        self.state = state
        self.implicit_tls = implicit_tls
        self.limits = limits
        self.trusted_proxies = trusted_proxies
        self.meta: ConnectionMeta = None  # type: ignore[assignment]  # set in connection_made
        self.refusal: str | None = None  # a 421 to send instead of the greeting
        self.draining = False
        self._busy = False
        self._raw_replies = False
        # The lines of a multi-line reply, while it is being built (see _one_write).
        self._held_lines: list[bytes] | None = None
        self._errors = 0
        self._greeted = False
        self._command: str | None = None  # the command being answered, if any
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
        self._smtp_methods = _Commands(self, tuple(self._smtp_methods))  # type: ignore[assignment]

    def __dir__(self) -> list[str]:
        """Only the commands and AUTH mechanisms: all that aiosmtpd's ``__init__`` asks for.

        aiosmtpd builds its dispatch tables from ``dir()`` and ``inspect.getmembers()``
        of each new session. Over all of the 220-odd attributes an SMTP protocol has,
        that took 230 µs of the event loop for every connection (docs/benchmarks.md).
        The names are the class's, so they are listed once.
        """
        return dispatch_names(type(self), ("smtp_", "auth_"))

    # aiosmtpd decides "is this session encrypted?" by this attribute, which only
    # STARTTLS sets; on an implicit-TLS listener every session is.
    @property
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
        self.meta.set_peer(client, data.src_port)
        if data.dst_addr is not None:  # where the client connected: the balancer's front
            self.meta.set_local(str(data.dst_addr), data.dst_port)
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
                hostname=self.hostname,
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
        for callback in meta.on_close:
            try:
                work = callback()
                if work is not None:  # a coroutine: background work shutdown waits for
                    self.state.spawn(work)
            except Exception:
                log.exception("conn %s: a connection-end callback failed", meta["conn_id"])
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
        """aiosmtpd's DATA, reading the message in bulk into one buffer (protocol/data.py).

        The message's bytes are held against the worker's DATA_MEMORY_BUDGET
        from the 354 until it is stored or refused: all at once if MAIL FROM
        declared a SIZE (452 4.3.1 to DATA if that much is not free), else as
        they arrive (452 4.3.1 after the data if the budget runs out).
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        reservation = Reservation(self.state.budget)
        try:
            declared = declared_size(self.envelope.mail_options)
            if declared and not reservation.grow_to(declared):
                self.report_no_storage(declared)
                await self.push(replies.INSUFFICIENT_STORAGE)
                return
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            reader = DataReader(
                self._reader,
                size_limit=self.data_size_limit,
                bare_line_endings=self.limits.bare_line_endings,
                reservation=reservation,
            )
            self._data_deadline = self.loop.time() + self.limits.data_timeout
            try:
                await reader.read()
            except asyncio.CancelledError:
                log.info("conn %s: connection lost during DATA", self.meta["conn_id"])
                self._writer.close()
                raise
            except asyncio.IncompleteReadError:
                return  # the client went away; aiosmtpd cancels the session
            finally:
                self._data_deadline = None
            if reader.refusal is not None:
                if reader.refusal == replies.INSUFFICIENT_STORAGE:
                    self.report_no_storage(reader.received)
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                await self.push(reader.refusal)
                return
            # aiosmtpd's decode_data is off: content and original_content are the same bytes.
            self.envelope.original_content = self.envelope.content = reader.take()  # type: ignore[assignment]
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]  # drops the message: its memory is free again
            await self.push("250 OK" if status is MISSING else status)
        finally:
            reservation.release()

    def report_no_storage(self, size: int) -> None:
        """Log a 452 4.3.1 with the state of the budget (operators size it by these)."""
        budget = self.state.budget
        log.warning(
            "conn %s: DATA_MEMORY_BUDGET exhausted (%d of %d bytes in use): %d bytes refused "
            "with 452 4.3.1",
            self.meta["conn_id"],
            budget.in_use,
            budget.limit,
            size,
        )

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
        if not self._greeted:
            # The first reply is the greeting, sent after a PROXY header has named the
            # real client: the moment of smtp_server_connection_accepted.
            self._greeted = True
            refusal = await events.connection_accepted(self.meta)
            if refusal is not None:
                log.info("conn %s refused by policy: %s", self.meta["conn_id"], refusal)
                self.meta["refused"] = refusal
                self.close_with(refusal)
                return
        if isinstance(status, str):
            # The lines of an EHLO reply are smtp_server_ehlo's business.
            if events.rewrites_responses() and self._held_lines is None and status[3:4] != "-":
                status = await self._rewritten(status)
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
        if self._held_lines is not None:
            # As aiosmtpd's push() encodes a line.
            line = (
                status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
                if isinstance(status, str)
                else status
            )
            self._held_lines.append(line + b"\r\n")
            return
        if isinstance(status, str):
            await super().push(status)
        else:
            await super().push(status)

    async def _rewritten(self, status: str) -> str:
        """The reply as smtp_server_rewrite_response leaves it (the protocol's state is not
        changed by it: the 250 after DATA, given once the message is stored, stays a 250)."""
        if not status[:3].isdigit():
            return status
        code, text = int(status[:3]), status[4:]
        new_code, new_text = await events.rewrite_response(code, text, self._command, self.meta)
        if not _may_become(code, new_code):
            log.warning(
                "conn %s: smtp_server_rewrite_response may not turn %d (to %s) into %d: "
                "the session has acted on it; the reply is kept",
                self.meta["conn_id"],
                code,
                self._command or "no command",
                new_code,
            )
            return status
        return f"{new_code} {new_text}".rstrip()

    async def _raw(self, command: Callable[[str], Awaitable[None]], arg: str) -> None:
        # RFC 2034: the greeting and the EHLO/HELO replies carry no enhanced codes.
        self._raw_replies = True
        try:
            await command(arg)
        finally:
            self._raw_replies = False

    async def _one_write(self, command: Callable[[str], Awaitable[None]], arg: str) -> None:
        """Run ``command`` with its reply lines sent together, in one write.

        aiosmtpd writes each line of a multi-line reply by itself: for EHLO,
        eight TLS records and eight system calls, where one of each will do.
        """
        self._held_lines = held = list[bytes]()
        try:
            await command(arg)
        finally:
            self._held_lines = None
            if held and not self._writer.is_closing():
                log.debug("%r << %r", self.session.peer if self.session else None, held)
                self._writer.write(b"".join(held))
        await self._writer.drain()

    async def smtp_EHLO(self, hostname: str) -> None:
        self.command_size_limits.clear()  # aiosmtpd adds to them on every EHLO
        self.command_size_limits["AUTH"] = AUTH_LINE_LIMIT
        await self._one_write(partial(self._raw, super().smtp_EHLO), hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        await self._raw(super().smtp_HELO, hostname)

    # -- commands aiosmtpd gets wrong --------------------------------------------------

    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's STARTTLS, on :class:`~kumosubmit.protocol.tls.SessionSSLProtocol`.

        aiosmtpd builds asyncio's ``SSLProtocol`` itself, with its 256 KiB
        receive buffer per connection; this is the same upgrade with ours.
        """
        if self.on_tls:
            await self.push(replies.TLS_ALREADY)
            return
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 TLS not available")
            return
        await self.push("220 Ready to start TLS")
        waiter = self.loop.create_future()
        self._tls_protocol = tls.server_protocol(self.loop, self, self.tls_context, waiter)
        # Keep the plain transport, to close it when the connection is lost (aiosmtpd does).
        self._original_transport = self.transport
        assert self._original_transport is not None
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        # The handshake; connection_made() runs again, on the TLS transport, once it is done.
        self._tls_protocol.connection_made(self._original_transport)
        try:
            await waiter
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, with a fast path for the plain ``<local@domain>``.

        aiosmtpd defines a class and runs the email package's full RFC 5322
        parser at every MAIL and RCPT: a fifth of the CPU a message costs. The
        common form gives the same answer from one regex.
        """
        simple = addresses.split_simple_path(arg)
        if simple is None:
            return super()._getaddr(arg)
        address, rest = simple
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    async def smtp_AUTH(self, arg: str) -> None:
        if self.session is not None and self.session.authenticated:
            await self.push(replies.AUTH_ALREADY)
            return
        await super().smtp_AUTH(arg)

    # -- graceful shutdown ------------------------------------------------------------

    def _tracked(
        self, name: str, method: Callable[[str], Awaitable[None]]
    ) -> Callable[[str], Awaitable[None]]:
        """Wrap a command so a draining server can tell idle sessions from busy ones, and
        replies can be told which command they answer (smtp_server_rewrite_response)."""

        async def run(arg: str) -> None:
            self._busy = True
            self._command = name
            try:
                await method(arg)
            finally:
                self._busy = False
                self._command = None
            if self.draining and not self.in_transaction:
                self.close_for_shutdown()

        # What HELP reads (__smtp_syntax__ ...): the method's own attributes, shared, not
        # copied as functools.wraps would at every command.
        run.__dict__ = method.__func__.__dict__  # type: ignore[attr-defined]
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
