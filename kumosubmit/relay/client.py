"""One upstream SMTP connection that delivers message after message (aiosmtplib).

The envelope goes out exactly as stored: MAIL FROM and RCPT TO are written
here rather than through aiosmtplib's ``mail()``/``rcpt()``, which reparse
addresses with ``email.utils.parseaddr`` (a quoted local part would change).
The content goes through ``data()``, which adds only SMTP's transparency dots;
kumosubmit stores CRLF-only content (bare line endings are refused or
normalised at DATA), so the upstream receives it byte for byte.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import ssl
from dataclasses import dataclass, field

import aiosmtplib

from kumosubmit.relay.config import RelayConfig

log = logging.getLogger("kumosubmit.relay")

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class Verdict(enum.StrEnum):
    """What one attempt means for one recipient."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"  # 4xx, a network error or a timeout: try again later
    FAILED = "failed"  # 5xx: never


@dataclass(frozen=True)
class Outcome:
    """One recipient's result of one attempt: the verdict and the reply (or the error)."""

    verdict: Verdict
    reply: str
    #: The enhanced status code (RFC 3463) for a DSN: the reply's own, or one derived.
    status: str = ""


@dataclass
class Attempt:
    """The result of one delivery attempt, per recipient by their index in the envelope."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    #: The upstream's host, for a DSN's Remote-MTA field.
    remote: str = ""


def outcome_of(code: int, text: str) -> Outcome:
    """The verdict an SMTP reply gives: 2xx delivered, 5xx failed, anything else deferred."""
    reply = f"{code} {text}".strip()
    match = _ENHANCED.match(text)
    if 200 <= code < 300:
        return Outcome(Verdict.DELIVERED, reply, match.group(0) if match else "2.0.0")
    if 500 <= code < 600:
        return Outcome(Verdict.FAILED, reply, match.group(0) if match else "5.0.0")
    status = match.group(0) if match and match.group(1) == "4" else "4.0.0"
    return Outcome(Verdict.DEFERRED, reply, status)


def error_outcome(error: BaseException) -> Outcome:
    """A failure of the session rather than of the message: deferred, whatever its code.

    A network error, a timeout, a TLS failure, a 5xx greeting or a refused AUTH
    say nothing about the message, and usually mean a fault the operator will fix
    (a wrong password must not bounce every message); MAX_AGE still ends it.
    """
    if isinstance(error, aiosmtplib.SMTPResponseException) and error.code > 0:
        text = f"{error.code} {error.message}"
    else:
        text = f"{type(error).__name__}: {str(error) or 'no detail'}"
    connect = isinstance(error, ConnectionError | aiosmtplib.SMTPConnectError)
    return Outcome(Verdict.DEFERRED, text, "4.4.1" if connect else "4.4.2")


#: What an attempt can raise that only means "not now": the connection is dropped and retried.
NETWORK_ERRORS = (aiosmtplib.SMTPException, OSError, ssl.SSLError, asyncio.TimeoutError)


def _address(address: str, utf8: bool) -> bytes:
    return f"<{address}>".encode("utf-8" if utf8 else "ascii")


class UpstreamConnection:
    """A connection to the upstream MTA, opened on first use and reused up to a limit."""

    def __init__(self, config: RelayConfig, tls_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.tls_context = tls_context if tls_context is not None else config.tls_context()
        self.smtp: aiosmtplib.SMTP | None = None
        self.sent = 0  # messages on this connection
        self.connections = 0  # connections made, in all

    @property
    def is_open(self) -> bool:
        return self.smtp is not None and self.smtp.is_connected

    async def _connect(self) -> aiosmtplib.SMTP:
        config = self.config
        smtp = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            local_hostname=config.helo_name,
            timeout=config.timeout,
            use_tls=config.tls == "implicit",
            start_tls=config.tls == "starttls",
            tls_context=self.tls_context,
            username=config.username,
            password=config.password,
        )
        await smtp.connect()
        if smtp.is_ehlo_or_helo_needed:  # connect() greets only for STARTTLS or AUTH
            try:
                await smtp.ehlo()
            except aiosmtplib.SMTPHeloError:
                await smtp.helo()
        self.connections += 1
        self.sent = 0
        return smtp

    async def close(self) -> None:
        """QUIT politely; drop the connection if the upstream does not answer."""
        smtp, self.smtp = self.smtp, None
        if smtp is None or not smtp.is_connected:
            return
        try:
            await smtp.quit(timeout=min(self.config.timeout, 5))
        except NETWORK_ERRORS:
            smtp.close()

    def abort(self) -> None:
        """Drop the connection without a word (after an error, when its state is unknown)."""
        smtp, self.smtp = self.smtp, None
        if smtp is not None:
            smtp.close()

    async def deliver(
        self, mail_from: str, recipients: list[tuple[int, str]], content: bytes
    ) -> Attempt:
        """Try ``recipients`` (index, address) once; every one gets an outcome.

        Never raises for anything the upstream or the network does: a refusal is
        a verdict, and an error defers whoever is not yet decided.
        """
        attempt = Attempt(remote=self.config.host)
        try:
            if not self.is_open or self.sent >= self.config.messages_per_connection:
                await self.close()
                self.smtp = await self._connect()
            await self._transaction(self.smtp, attempt, mail_from, recipients, content)
        except NETWORK_ERRORS as error:
            self.abort()
            outcome = error_outcome(error)
            log.info("relay to %s: %s", self.config.upstream, outcome.reply)
            for index, _ in recipients:
                attempt.outcomes.setdefault(index, outcome)
        return attempt

    async def _transaction(
        self,
        smtp: aiosmtplib.SMTP,
        attempt: Attempt,
        mail_from: str,
        recipients: list[tuple[int, str]],
        content: bytes,
    ) -> None:
        self.sent += 1
        utf8 = not (mail_from.isascii() and all(rcpt.isascii() for _, rcpt in recipients))
        options = []
        if utf8:
            if not smtp.supports_extension("smtputf8"):
                outcome = Outcome(
                    Verdict.FAILED,
                    "553 5.6.7 the upstream does not offer SMTPUTF8, which this "
                    "message's non-ASCII addresses need",
                    "5.6.7",
                )
                attempt.outcomes.update((index, outcome) for index, _ in recipients)
                return
            options.append(b"SMTPUTF8")
        if smtp.supports_extension("size"):
            options.append(b"SIZE=%d" % len(content))
        if smtp.supports_extension("8bitmime") and not content.isascii():
            options.append(b"BODY=8BITMIME")
        try:
            response = await smtp.execute_command(
                b"MAIL", b"FROM:" + _address(mail_from, utf8), *options
            )
        except ValueError:  # a control character: not an address any MTA should see
            response = aiosmtplib.SMTPResponse(553, "5.1.7 the sender address is not valid")
        if response.code != 250:
            outcome = outcome_of(response.code, response.message)
            attempt.outcomes.update((index, outcome) for index, _ in recipients)
            return
        accepted = []
        for index, rcpt in recipients:
            try:
                response = await smtp.execute_command(b"RCPT", b"TO:" + _address(rcpt, utf8))
            except ValueError:
                response = aiosmtplib.SMTPResponse(553, "5.1.3 the recipient address is not valid")
            if response.code in (250, 251):
                accepted.append(index)
            else:
                attempt.outcomes[index] = outcome_of(response.code, response.message)
        if not accepted:
            await smtp.rset()
            return
        try:
            response = await smtp.data(content, timeout=self.config.data_timeout)
        except aiosmtplib.SMTPDataError as error:
            outcome = outcome_of(error.code, error.message)
            attempt.outcomes.update((index, outcome) for index in accepted)
            await smtp.rset()  # a refused DATA (no 354, or not 250 at the end) may leave the
            return  # transaction open; if the upstream hung up, the caller's handler aborts
        outcome = outcome_of(response.code, response.message)
        attempt.outcomes.update((index, outcome) for index in accepted)
