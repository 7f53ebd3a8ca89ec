"""aiosmtpd's handler: each SMTP step becomes an event (kumosubmit.hooks), each verdict a reply.

aiosmtpd calls ``handle_<VERB>`` and ``auth_<MECH>`` on this object with the
:class:`~kumosubmit.protocol.server.SubmissionSMTP` of the connection. What is
decided here is only SMTP itself (syntax, the trace header, storage); every
policy is a handler of an event, built-in or the project's.
"""

from __future__ import annotations

import inspect
import json
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session

from kumosubmit.addresses import is_mailbox, is_recipient
from kumosubmit.hooks import events
from kumosubmit.hooks.message import Message, trace_header
from kumosubmit.meta import AUTH_ABORTED
from kumosubmit.protocol import replies
from kumosubmit.protocol.data import declared_size
from kumosubmit.protocol.sasl import (
    BearerCredentials,
    PlainCredentials,
    SaslError,
    decode_base64,
    parse_login_field,
    parse_oauthbearer,
    parse_plain,
    parse_xoauth2,
)
from kumosubmit.protocol.server import dispatch_names
from kumosubmit.spool import SpooledMessage, get_spool

if TYPE_CHECKING:
    from kumosubmit.protocol.server import SubmissionSMTP

log = logging.getLogger("kumosubmit.smtp")

NULL_SENDER = "<>"


class AuthIdentity:
    """What a session keeps after AUTH succeeds (``session.auth_data``)."""

    __slots__ = ("authc", "authz")

    def __init__(self, authz: str, authc: str) -> None:
        self.authz = authz
        self.authc = authc

    def __repr__(self) -> str:
        return f"AuthIdentity(authz={self.authz!r}, authc={self.authc!r})"


def oauth_error_status() -> str:
    """RFC 7628 section 3.2.2: the JSON of the error challenge (``invalid_token``)."""
    status: dict[str, str] = {"status": "invalid_token", "scope": events.oauth_scope()}
    configuration = events.oauth_openid_configuration()
    if configuration:
        status["openid-configuration"] = configuration
    return json.dumps(status, separators=(",", ":"))


#: The token mechanisms: offered once a validator or a handler can answer them.
BEARER_MECHANISMS = frozenset({"OAUTHBEARER", "XOAUTH2"})


def _without_bearer(line: str) -> str:
    words = line.split(" ")
    if words[0].upper() != "AUTH":
        return line
    return " ".join(word for word in words if word.upper() not in BEARER_MECHANISMS)


def _is_printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


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
        verdict = await events.ehlo(hostname, server.meta, [], extended=False, tls=server.on_tls)
        if isinstance(verdict, str):
            return verdict
        session.host_name = hostname
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
        # aiosmtpd's lines are "250-NAME", the extensions, then "250 HELP"; we announce
        # what we do besides, and keep HELP last.
        extensions = [line[4:] for line in responses[1:-1]]
        if not events.oauth_offered():
            extensions = [_without_bearer(line) for line in extensions]
        extensions += ["PIPELINING", "ENHANCEDSTATUSCODES", responses[-1][4:]]
        verdict = await events.ehlo(
            hostname, server.meta, extensions, extended=True, tls=server.on_tls
        )
        if isinstance(verdict, str):
            return [verdict]
        session.host_name = hostname
        if not verdict:
            return [f"250 {server.hostname}"]
        return [
            f"250-{server.hostname}",
            *(f"250-{line}" for line in verdict[:-1]),
            f"250 {verdict[-1]}",
        ]

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
        """Ask the ``smtp_server_auth_plain`` event (kumosubmit.hooks.events.auth_plain)."""
        authz, authc, password = credentials
        verdict = await events.auth_plain(mechanism, authz, authc, password, server.meta)
        if verdict.success:
            return AuthResult(
                success=True, auth_data=AuthIdentity(authz, authc), message=verdict.reply
            )
        return AuthResult(success=False, handled=False, message=verdict.reply)

    # -- AUTH OAUTHBEARER (RFC 7628) and XOAUTH2 ---------------------------------------

    async def auth_OAUTHBEARER(self, server: SubmissionSMTP, args: list[str]) -> AuthResult:
        return await self._bearer(server, "OAUTHBEARER", args, parse_oauthbearer)

    async def auth_XOAUTH2(self, server: SubmissionSMTP, args: list[str]) -> AuthResult:
        return await self._bearer(server, "XOAUTH2", args, parse_xoauth2)

    async def _bearer(
        self,
        server: SubmissionSMTP,
        mechanism: str,
        args: list[str],
        parse: Callable[[bytes], BearerCredentials],
    ) -> AuthResult:
        """Ask ``smtp_server_auth_oauthbearer``; a refusal gets the error challenge first.

        RFC 7628 section 3.2.2: the server answers a failed token with a ``334``
        carrying a JSON status, the client answers it with a dummy response
        (``^A``; XOAUTH2 clients send an empty line), and only then comes the
        final ``535``. Temporary failures (``454``) and closes (``421``) are
        answered at once.
        """
        if not events.oauth_offered():
            return AuthResult(success=False, handled=False, message=replies.AUTH_UNKNOWN_MECHANISM)
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                server.meta.record_auth(mechanism, "", "", AUTH_ABORTED)
                return AuthResult(success=False, handled=True)
        else:
            blob = args[1]
        try:
            raw = decode_base64(blob) if isinstance(blob, str) else blob
            assert isinstance(raw, bytes)
            credentials = parse(raw)
        except SaslError:
            server.meta.record_auth(mechanism, "", "", AUTH_ABORTED)
            return AuthResult(success=False, handled=False, message=replies.AUTH_MALFORMED)
        verdict = await events.auth_oauthbearer(
            mechanism, credentials.authz, credentials.token, server.meta
        )
        if verdict.success:
            return AuthResult(
                success=True,
                auth_data=AuthIdentity(verdict.authz, verdict.authc),
                message=verdict.reply,
            )
        if verdict.reply.startswith("5"):
            # The error challenge; whatever the client answers, the exchange ends with
            # the refusal (a "*" cancels it: challenge_auth answers that with 501).
            answer = await server.challenge_auth(oauth_error_status(), encode_to_b64=True)
            if answer is MISSING:
                return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=verdict.reply)

    # -- the transaction --------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SubmissionSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if address != NULL_SENDER and not is_mailbox(address):
            return replies.BAD_SENDER
        refusal = await events.mail_from("" if address == NULL_SENDER else address, server.meta)
        if refusal is not None:
            return refusal
        size = declared_size(mail_options)
        if size and size > server.state.budget.available():
            # RFC 1870 section 6.1: a temporary lack of room for a message this big.
            server.report_no_storage(size)
            return replies.INSUFFICIENT_STORAGE
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.SENDER_OK

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
        refusal = await events.rcpt_to(address, server.meta)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(
        self, server: SubmissionSMTP, session: Session, envelope: Envelope
    ) -> str:
        """``smtp_server_data``, the trace header, ``smtp_server_message_received``, then the
        spool commit; the 250 only once the message is stored."""
        meta = server.meta
        # The one buffer protocol/data.py read the message into: dot-unstuffed, bare
        # line endings already refused or normalized. Not copied from here on.
        content = envelope.original_content
        assert isinstance(content, bytearray)
        message = Message(
            "" if envelope.mail_from == NULL_SENDER else str(envelope.mail_from),
            envelope.rcpt_tos,
            content,
            conn_meta=meta,
        )
        refusal = await events.data(message, meta)
        if refusal is not None:
            return refusal
        queue_id = uuid.uuid4().hex
        recipients = message.freeze_recipients()
        # The trace header goes in front, in place (a realloc, not a second copy).
        message.prepend_raw(trace_header(server.hostname, meta, recipients, queue_id))

        async def store(message: Message) -> str:
            spooled = SpooledMessage(
                mail_from=message.sender.address,
                rcpt_tos=list(recipients),
                content=message.buffer,
                meta=message.stored_meta(),
                queue_id=queue_id,
            )
            try:
                await get_spool().store(spooled)
            except Exception:
                log.exception("conn %s: could not store a message; answered 451", meta["conn_id"])
                return replies.NOT_STORED
            meta.record_message(len(spooled.content))
            return replies.queued(queue_id)

        return await events.message_received(message, meta, store)
