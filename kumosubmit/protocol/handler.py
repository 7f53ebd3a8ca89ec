"""What kumosubmit does with each SMTP command: AUTH through the hook, DATA into the spool.

aiosmtpd calls ``handle_<VERB>`` and ``auth_<MECH>`` on this object with the
:class:`~kumosubmit.protocol.server.SubmissionSMTP` of the connection.
"""

from __future__ import annotations

import asyncio
import email.policy
import inspect
import logging
import traceback
import uuid
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session
from django.utils import timezone

from kumosubmit import hooks
from kumosubmit.conf import app_settings
from kumosubmit.credentials import throttle
from kumosubmit.credentials.senders import SenderPolicy, load_policy
from kumosubmit.db import run_db
from kumosubmit.meta import (
    AUTH_ABORTED,
    AUTH_BLOCKED,
    AUTH_ERROR,
    AUTH_FAILURE,
    AUTH_SUCCESS,
)
from kumosubmit.protocol import replies
from kumosubmit.protocol.addresses import is_mailbox, is_recipient
from kumosubmit.protocol.data import declared_size
from kumosubmit.protocol.sasl import (
    PlainCredentials,
    SaslError,
    decode_base64,
    parse_login_field,
    parse_plain,
)
from kumosubmit.protocol.server import dispatch_names
from kumosubmit.spool import SpooledMessage, get_spool

if TYPE_CHECKING:
    from kumosubmit.protocol.server import SubmissionSMTP

log = logging.getLogger("kumosubmit.smtp")

NULL_SENDER = "<>"


class AuthIdentity:
    """What a session keeps after AUTH succeeds (``session.auth_data``)."""

    __slots__ = ("authc", "authz", "senders")

    def __init__(self, authz: str, authc: str) -> None:
        self.authz = authz
        self.authc = authc
        # Loaded with AUTH (_settle_success), or at the first MAIL FROM if that failed.
        self.senders: SenderPolicy | None = None

    def __repr__(self) -> str:
        return f"AuthIdentity(authz={self.authz!r}, authc={self.authc!r})"


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _is_printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _printable(text: str | None) -> str:
    return "".join(c for c in (text or "") if c.isprintable() and c.isascii())[:255]


def received_header(server: SubmissionSMTP, envelope: Envelope, queue_id: str) -> bytes:
    """The trace header for this hop (RFC 5321 section 4.4; ESMTPSA from RFC 3848)."""
    meta = server.meta
    ip = meta["peer_address"] or "unknown"
    literal = f"IPv6:{ip}" if ":" in ip else ip
    lines = [
        f"Received: from {_printable(meta['ehlo_name']) or 'unknown'} ([{literal}])",
        f"\tby {server.hostname} (kumosubmit) with ESMTPSA id {queue_id}",
        f"\t(version={meta['tls_version']} cipher={meta['tls_cipher']})",
    ]
    if len(envelope.rcpt_tos) == 1:
        lines.append(f"\tfor <{_printable(envelope.rcpt_tos[0])}>")
    lines[-1] += ";"
    lines.append(f"\t{format_datetime(timezone.now())}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


class SubmissionHandler:
    """The aiosmtpd handler of a submission listener."""

    def __dir__(self) -> list[str]:
        """Only the hooks and AUTH mechanisms: what aiosmtpd looks for, for every connection.

        aiosmtpd lists a handler's ``dir()`` and ``inspect.getmembers()`` anew for each
        session it makes (see ``SubmissionSMTP.__dir__``).
        """
        return dispatch_names(type(self), ("handle_", "auth_"))

    # -- greeting ---------------------------------------------------------------

    async def handle_HELO(
        self, server: SubmissionSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        if not _is_printable_ascii(hostname):
            return replies.BAD_HELO
        session.host_name = hostname
        server.meta["ehlo_name"] = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self,
        server: SubmissionSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if not _is_printable_ascii(hostname):
            return [replies.BAD_HELO]
        session.host_name = hostname
        server.meta["ehlo_name"] = hostname
        # aiosmtpd ends with "250 HELP"; we keep it last and announce what we do besides.
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    # aiosmtpd reads this hook's signature (the old 4- or the 5-argument form) for every
    # connection; inspect.signature() takes a __signature__ as it finds it (80 µs less).
    handle_EHLO.__signature__ = inspect.signature(handle_EHLO)  # type: ignore[attr-defined]

    async def handle_PROXY(
        self, server: SubmissionSMTP, session: Session, envelope: Envelope, data: Any
    ) -> bool:
        return server.accept_proxy(data)

    # -- AUTH (RFC 4954) --------------------------------------------------------

    async def auth_PLAIN(self, server: SubmissionSMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            # challenge_auth answers '*' and bad base64 with 501 itself.
            blob = await server.challenge_auth("")
            if blob is MISSING:
                server.meta.record_auth("PLAIN", "", "", AUTH_ABORTED)
                return AuthResult(success=False, handled=True)
        else:
            blob = args[1]
        try:
            raw = decode_base64(blob) if isinstance(blob, str) else blob
            assert isinstance(raw, bytes)
            credentials = parse_plain(raw)
        except SaslError:
            server.meta.record_auth("PLAIN", "", "", AUTH_ABORTED)
            return AuthResult(success=False, handled=False, message=replies.AUTH_MALFORMED)
        return await self._authenticate(server, "PLAIN", credentials)

    async def auth_LOGIN(self, server: SubmissionSMTP, args: list[str]) -> AuthResult:
        try:
            if len(args) == 1:
                user_blob = await server.challenge_auth("Username:")
                if user_blob is MISSING:
                    server.meta.record_auth("LOGIN", "", "", AUTH_ABORTED)
                    return AuthResult(success=False, handled=True)
                assert isinstance(user_blob, bytes)
            else:
                user_blob = decode_base64(args[1])
            user = parse_login_field(user_blob, "user name")
            password_blob = await server.challenge_auth("Password:")
            if password_blob is MISSING:
                server.meta.record_auth("LOGIN", user, user, AUTH_ABORTED)
                return AuthResult(success=False, handled=True)
            assert isinstance(password_blob, bytes)
            password = parse_login_field(password_blob, "password")
        except SaslError:
            server.meta.record_auth("LOGIN", "", "", AUTH_ABORTED)
            return AuthResult(success=False, handled=False, message=replies.AUTH_MALFORMED)
        if not user:
            server.meta.record_auth("LOGIN", "", "", AUTH_ABORTED)
            return AuthResult(success=False, handled=False, message=replies.AUTH_MALFORMED)
        # LOGIN has no authorization identity: the login acts as itself.
        return await self._authenticate(server, "LOGIN", PlainCredentials(user, user, password))

    async def _authenticate(
        self, server: SubmissionSMTP, mechanism: str, credentials: PlainCredentials
    ) -> AuthResult:
        """Ask the ``smtp_server_auth_plain`` hook; only a plain ``True`` lets the client in.

        Failed-AUTH penalties (:mod:`kumosubmit.credentials.throttle`) wrap the hook:
        a blocked address or login is refused before the hook runs, so a flood of
        guesses costs one indexed query each and no argon2 work; a refused password
        is counted and answered after a growing delay; a success clears the
        address's count. If the block check cannot be made, the answer is 454
        (fail closed), as when the hook fails.
        """
        authz, authc, password = credentials
        meta = server.meta
        address = meta["peer_address"]
        policy = throttle.policy()
        standing = None
        if policy.enabled:
            try:
                standing = await throttle.check(policy, address, authc)
            except Exception:
                log.exception("conn %s: could not check AUTH blocks; answered 454", meta["conn_id"])
                meta.record_auth(mechanism, authz, authc, AUTH_ERROR)
                return AuthResult(success=False, handled=False, message=replies.AUTH_TEMPFAIL)
            block = standing.block
            if block is not None:
                meta.record_auth(mechanism, authz, authc, AUTH_BLOCKED)
                meta["auth_block"] = block.as_meta()
                log.info(
                    "conn %s: AUTH for %r refused: %s %s blocked until %s",
                    meta["conn_id"],
                    authc,
                    block.kind,
                    block.value,
                    block.until.isoformat(),
                )
                # A blocked address gets a 421, and the server hangs up after a 421.
                reply = (
                    replies.LOGIN_BLOCKED
                    if block.kind == throttle.LOGIN
                    else replies.ADDRESS_BLOCKED
                )
                return AuthResult(success=False, handled=False, message=reply)
        try:
            verdict = await hooks.call("smtp_server_auth_plain", authz, authc, password, meta)
        except Exception as error:
            log.error(
                "conn %s: smtp_server_auth_plain failed for %r; answered 454:\n%s",
                meta["conn_id"],
                authc,
                _scrub("".join(traceback.format_exception(error)), password),
            )
            verdict = None
        else:
            if not isinstance(verdict, bool):
                log.error(
                    "conn %s: smtp_server_auth_plain returned a %s, not a bool; answered 454",
                    meta["conn_id"],
                    type(verdict).__name__,
                )
                verdict = None
        if verdict is True:
            meta.record_auth(mechanism, authz, authc, AUTH_SUCCESS)
            identity = AuthIdentity(authz, authc)
            forget = standing is not None and standing.has_failures
            if forget or app_settings.CHECK_SENDER:
                try:
                    await run_db(
                        _settle_success, policy, address, identity, meta["conn_id"], forget
                    )
                except Exception:  # the database thread could not even start the work
                    log.exception("conn %s: could not settle a good AUTH", meta["conn_id"])
            return AuthResult(success=True, auth_data=identity, message=replies.AUTH_SUCCESS)
        if verdict is False:
            meta.record_auth(mechanism, authz, authc, AUTH_FAILURE)
            if policy.enabled:
                try:
                    failure = await throttle.record_failure(policy, address, authc)
                    delay = policy.delay_for(failure.address_failures)
                except Exception:
                    log.exception("conn %s: could not count an AUTH failure", meta["conn_id"])
                    delay = policy.max_delay  # uncounted, so at least slow
                if delay > 0:
                    await asyncio.sleep(delay)
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        meta.record_auth(mechanism, authz, authc, AUTH_ERROR)
        return AuthResult(success=False, handled=False, message=replies.AUTH_TEMPFAIL)

    # -- the transaction --------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SubmissionSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        cap = server.limits.max_messages
        if cap is not None and server.meta["messages_accepted"] >= cap:
            return replies.TOO_MANY_MESSAGES
        if address != NULL_SENDER and not is_mailbox(address):
            return replies.BAD_SENDER
        if app_settings.CHECK_SENDER:
            senders = await self._sender_policy(session)
            if not senders.permits("" if address == NULL_SENDER else address):
                return replies.SENDER_NOT_ALLOWED
        size = declared_size(mail_options)
        if size and size > server.state.budget.available():
            # RFC 1870 section 6.1: a temporary lack of room for a message this big.
            server.report_no_storage(size)
            return replies.INSUFFICIENT_STORAGE
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.SENDER_OK

    async def _sender_policy(self, session: Session) -> SenderPolicy:
        identity = session.auth_data
        assert isinstance(identity, AuthIdentity)  # MAIL needs AUTH first
        if identity.senders is None:
            identity.senders = await run_db(load_policy, identity.authz, identity.authc)
        return identity.senders

    async def handle_RCPT(
        self,
        server: SubmissionSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not is_recipient(address):
            return replies.BAD_RECIPIENT
        if len(envelope.rcpt_tos) >= server.limits.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(
        self, server: SubmissionSMTP, session: Session, envelope: Envelope
    ) -> str:
        meta = server.meta
        queue_id = uuid.uuid4().hex
        # The one buffer protocol/data.py read the message into: dot-unstuffed, bare
        # line endings already refused or normalized. Not copied from here on.
        content = envelope.original_content
        assert isinstance(content, bytearray)
        if app_settings.CHECK_HEADER_FROM and not header_senders_permitted(
            content, await self._sender_policy(session)
        ):
            return replies.HEADER_FROM_NOT_ALLOWED
        # The trace header goes in front, in place (a realloc, not a second copy).
        content[:0] = received_header(server, envelope, queue_id)
        message = SpooledMessage(
            mail_from="" if envelope.mail_from == NULL_SENDER else str(envelope.mail_from),
            rcpt_tos=list(envelope.rcpt_tos),
            content=content,
            meta=message_meta(meta),
            queue_id=queue_id,
        )
        try:
            await get_spool().store(message)
        except Exception:
            log.exception("conn %s: could not store a message; answered 451", meta["conn_id"])
            return replies.NOT_STORED
        meta.record_message(len(message.content))
        return replies.queued(message.queue_id)


def _settle_success(
    policy: throttle.Policy,
    address: str | None,
    identity: AuthIdentity,
    conn_id: str,
    forget: bool,
) -> None:
    """After a good AUTH, in one trip to the database: forget the address's failures (if
    the check before it saw any), and load what the session may send as (every
    message's MAIL FROM needs it).

    Neither may cost the client its 235: what fails is logged, and the sender policy
    is then loaded at MAIL FROM, where a failure gets its own reply.
    """
    if forget:
        try:
            throttle.forget_failures(policy, address, identity.authc)
        except Exception:
            log.exception("conn %s: could not clear AUTH failures", conn_id)
    if app_settings.CHECK_SENDER:
        try:
            identity.senders = load_policy(identity.authz, identity.authc)
        except Exception:
            log.exception("conn %s: could not load the sender policy at AUTH", conn_id)


def header_senders_permitted(content: bytes | bytearray, senders: SenderPolicy) -> bool:
    """Whether the message has From: addresses and the session may send as each of them."""
    end = content.find(b"\r\n\r\n")
    header = content[: end + 4] if end != -1 else content  # not the whole body
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(bytes(header))
    addresses = [address for _, address in getaddresses(headers.get_all("From", []))]
    return bool(addresses) and all(address and senders.permits(address) for address in addresses)


def message_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """What a stored message keeps of its connection's conn_meta."""
    keys = (
        "authz_id",
        "authn_id",
        "conn_id",
        "listener",
        "peer_address",
        "peer_port",
        "ehlo_name",
        "tls_version",
        "tls_cipher",
    )
    return {key: meta.get(key) for key in keys}
