"""The events, run for the protocol layer: handler chains in, SMTP replies out.

``protocol/`` calls one function here per SMTP step and gets back what to
answer; every decision is taken by the handlers of the event
(:mod:`kumosubmit.hooks.registry`), built-in or the project's. The rules
shared by all events:

- ``reject(code, text)`` in any handler gives exactly that reply, and stops
  the chain; a ``421`` also closes the connection (the protocol does that for
  every 421).
- Any other exception, and a handler that takes longer than ``HOOK_TIMEOUT``,
  gives a temporary failure (``454 4.7.0`` at AUTH, ``421 4.3.0`` instead of
  the greeting, ``451 4.3.0`` elsewhere) and is logged with the password
  blanked. It is never an accept.
- A wrapper (an async generator handler) gets the event's outcome back at its
  ``yield``: for ``smtp_server_auth_plain`` and ``smtp_server_auth_oauthbearer``
  the verdict (True, False, or None
  when there was none), for ``smtp_server_message_received`` whether the
  message was stored, for the others whether the command was accepted.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kumosubmit.conf import app_settings
from kumosubmit.hooks import registry
from kumosubmit.hooks.message import EnvelopeAddress, Message
from kumosubmit.hooks.reject import Reject
from kumosubmit.meta import (
    AUTH_ERROR,
    AUTH_FAILURE,
    AUTH_SUCCESS,
    ConnectionMeta,
)

log = logging.getLogger("kumosubmit.hooks")

CONNECTION_ACCEPTED = "smtp_server_connection_accepted"
EHLO = "smtp_server_ehlo"
AUTH_PLAIN = "smtp_server_auth_plain"
AUTH_OAUTHBEARER = "smtp_server_auth_oauthbearer"
MAIL_FROM = "smtp_server_mail_from"
RCPT_TO = "smtp_server_rcpt_to"
DATA = "smtp_server_data"
MESSAGE_RECEIVED = "smtp_server_message_received"
REWRITE_RESPONSE = "smtp_server_rewrite_response"

AUTH_SUCCESS_REPLY = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure"
TEMPFAIL = "451 4.3.0 Temporary failure, please try again later"
CONNECTION_TEMPFAIL = "421 4.3.0 Temporary failure, please try again later"
NO_RECIPIENTS = "554 5.5.1 No valid recipients"

#: conn_meta.cache key: seconds to hold the current command's reply (delay_reply).
_REPLY_DELAY = "reply_delay"


@dataclass
class Transaction:
    """The mail transaction as the hooks saw it: ``conn_meta.transaction``."""

    sender: EnvelopeAddress
    recipients: list[EnvelopeAddress] = field(default_factory=list)


@dataclass(frozen=True)
class AuthVerdict:
    """What an AUTH attempt came to: the reply, and whether the client is in."""

    success: bool
    reply: str
    #: After a success: whom the client acts as, and who authenticated (authz_id, authn_id).
    authz: str = ""
    authc: str = ""


def delay_reply(conn_meta: ConnectionMeta, seconds: float) -> None:
    """Hold the reply to the current command for ``seconds`` (a tarpit), at any event.

    The built-in failed-AUTH penalties answer a wrong password this way; only
    the session concerned waits.
    """
    conn_meta.cache[_REPLY_DELAY] = max(seconds, conn_meta.cache.get(_REPLY_DELAY, 0.0))


async def _hold_reply(conn_meta: ConnectionMeta) -> None:
    delay = conn_meta.cache.pop(_REPLY_DELAY, 0.0)
    if delay > 0:
        await asyncio.sleep(delay)


def _log_failure(
    event: str, meta: ConnectionMeta, reply: str, error: BaseException, secret: str = ""
) -> None:
    text = "".join(traceback.format_exception(error))
    if secret:
        text = text.replace(secret, "***")
    log.error("conn %s: %s failed; answered %s:\n%s", meta.get("conn_id"), event, reply[:3], text)


class _Run:
    """One run of an event's chain: the wrappers entered, to be told the outcome."""

    __slots__ = ("args", "event", "wrappers")

    def __init__(self, event: str, args: tuple[Any, ...]) -> None:
        self.event = event
        self.args = args
        self.wrappers: list[Any] = []

    async def handlers(
        self,
        until: Callable[[Any], bool] | None = None,
        fold: Callable[[Any], tuple[Any, ...]] | None = None,
    ) -> Any:
        """Run the chain; stop at the first result ``until`` accepts, and return it.
        ``fold`` makes the next handler's arguments from a result (EHLO's extensions)."""
        result = None
        for handler in registry.chain(self.event):
            if handler.wrapper:
                generator = handler.func(*self.args)
                await registry.bounded(self.event, generator.__anext__())
                self.wrappers.append(generator)
                continue
            result = await registry.call(self.event, handler, *self.args)
            if until is not None and until(result):
                break
            if fold is not None:
                self.args = fold(result)
        return result

    async def finish(self, outcome: Any) -> Reject | None:
        """Send ``outcome`` to the wrappers, last entered first; a Reject one of them raised."""
        refusal = None
        while self.wrappers:
            generator = self.wrappers.pop()
            try:
                await registry.bounded(self.event, generator.asend(outcome))
            except StopAsyncIteration:
                continue
            except Reject as error:
                refusal = refusal or error
                continue
            await generator.aclose()
            raise RuntimeError(f"a {self.event} wrapper yielded more than once")
        return refusal


async def _simple(
    event: str, args: tuple[Any, ...], meta: ConnectionMeta, tempfail: str
) -> str | None:
    """Run an event whose handlers return nothing: None to go on, or the refusal; the
    reply is held if a handler asked for it (delay_reply)."""
    try:
        return await _run_simple(event, args, meta, tempfail)
    finally:
        await _hold_reply(meta)


async def _run_simple(
    event: str, args: tuple[Any, ...], meta: ConnectionMeta, tempfail: str
) -> str | None:
    refusal, _ = await _guarded(_Run(event, args), meta, tempfail)
    return refusal


async def _guarded(
    run: _Run,
    meta: ConnectionMeta,
    tempfail: str,
    fold: Callable[[Any], tuple[Any, ...]] | None = None,
) -> tuple[str | None, Any]:
    """Run the chain and then its wrappers: (the refusal or None, the last result)."""
    try:
        result = await run.handlers(fold=fold)
    except Reject as error:
        await _finish_quietly(run, False, meta)
        return error.reply, None
    except Exception as error:
        _log_failure(run.event, meta, tempfail, error)
        await _finish_quietly(run, False, meta)
        return tempfail, None
    try:
        refusal = await run.finish(True)
    except Exception as error:
        _log_failure(run.event, meta, tempfail, error)
        return tempfail, None
    return (refusal.reply if refusal else None), result


async def _finish_quietly(run: _Run, outcome: Any, meta: ConnectionMeta, secret: str = "") -> None:
    """Tell the wrappers of a refused run; what they raise now changes nothing."""
    try:
        await run.finish(outcome)
    except Exception as error:
        _log_failure(run.event, meta, "(unchanged)", error, secret)


# -- the events, in the order a session meets them -----------------------------------------


async def connection_accepted(meta: ConnectionMeta) -> str | None:
    """Before the greeting (after a PROXY header): None, or the reply to close with."""
    if not registry.has_handlers(CONNECTION_ACCEPTED):
        return None
    return await _simple(CONNECTION_ACCEPTED, (meta,), meta, CONNECTION_TEMPFAIL)


def _extension(line: Any) -> str:
    if not isinstance(line, str) or not line or not line.isascii() or not line.isprintable():
        raise ValueError(f"{line!r} is not an EHLO extension line")
    return line


async def ehlo(
    domain: str, meta: ConnectionMeta, extensions: Sequence[str], *, extended: bool, tls: bool
) -> list[str] | str:
    """EHLO or HELO: the extensions to advertise (each handler may return a new list),
    or the refusal. AUTH is never advertised before TLS, whatever a handler returns."""
    meta.set_ehlo(domain, extended=extended)
    if not registry.has_handlers(EHLO):
        return list(extensions)
    try:
        return await _run_ehlo(domain, meta, list(extensions), extended=extended, tls=tls)
    finally:
        await _hold_reply(meta)


async def _run_ehlo(
    domain: str, meta: ConnectionMeta, extensions: list[str], *, extended: bool, tls: bool
) -> list[str] | str:
    current = extensions

    def fold(result: Any) -> tuple[Any, ...]:
        nonlocal current
        if result is not None and extended:
            current = [_extension(line) for line in result]
        return (domain, meta, list(current))

    refusal, _ = await _guarded(_Run(EHLO, fold(None)), meta, TEMPFAIL, fold)
    if refusal is not None:
        return refusal
    if not tls:
        current = [line for line in current if line.split(" ", 1)[0].upper() != "AUTH"]
    return current


def _decided(result: Any) -> bool:
    return result is not None


async def auth_plain(
    mechanism: str, authz: str, authc: str, password: str, meta: ConnectionMeta
) -> AuthVerdict:
    """AUTH PLAIN or LOGIN: only a plain ``True`` from the first handler that decides lets
    the client in; ``False`` is 535; ``None`` passes to the next handler; anything else,
    or no decision at all, is 454."""

    async def decide(verdict: Any) -> tuple[bool | None, str]:
        if verdict is True or verdict is False:
            return verdict, authc
        _log_no_decision(AUTH_PLAIN, meta, verdict, authc, "a bool")
        return None, authc

    return await _authenticate(
        AUTH_PLAIN, (authz, authc, password, meta), mechanism, authz, authc, password, meta, decide
    )


async def auth_oauthbearer(
    mechanism: str, authz: str, token: str, meta: ConnectionMeta
) -> AuthVerdict:
    """AUTH OAUTHBEARER or XOAUTH2: the first handler that decides returns the login name
    the token is good for (it becomes ``authn_id``), or ``False`` (535); ``None`` passes
    to the next handler; anything else, or no decision at all, is 454.

    ``authz`` is the identity the client asked to act as (empty: the token's own). The
    login may act as another identity only as with PLAIN: if it may act as that one
    (:meth:`SmtpLogin.may_act_as`); otherwise the attempt is refused (535).
    """

    async def decide(verdict: Any) -> tuple[bool | None, str]:
        if verdict is False:
            return False, authz
        if not isinstance(verdict, str) or not verdict:
            _log_no_decision(AUTH_OAUTHBEARER, meta, verdict, authz, "a login name")
            return None, authz
        if authz and not await _may_act_as(verdict, authz):
            log.info(
                "conn %s: %s: token of %r may not act as %r",
                meta.get("conn_id"),
                AUTH_OAUTHBEARER,
                verdict,
                authz,
            )
            return False, verdict
        return True, verdict

    return await _authenticate(
        AUTH_OAUTHBEARER, (authz, token, meta), mechanism, authz, authz, token, meta, decide
    )


async def _may_act_as(identity: str, authz: str) -> bool:
    # Imported here: the credentials store is only needed once a token was accepted.
    from kumosubmit.credentials.service import may_act_as
    from kumosubmit.db import run_db

    if identity.strip().lower() == authz.strip().lower():
        return True
    return bool(await run_db(may_act_as, identity, authz))


def _log_no_decision(event: str, meta: ConnectionMeta, verdict: Any, who: str, wanted: str) -> None:
    log.error(
        "conn %s: %s gave %s for %r; answered 454",
        meta.get("conn_id"),
        event,
        "no decision" if verdict is None else f"a {type(verdict).__name__}, not {wanted}",
        who,
    )


async def _authenticate(
    event: str,
    args: tuple[Any, ...],
    mechanism: str,
    authz: str,
    claimed: str,
    secret: str,
    meta: ConnectionMeta,
    decide: Callable[[Any], Awaitable[tuple[bool | None, str]]],
) -> AuthVerdict:
    """Run an AUTH event's chain; ``decide`` turns the first result that is not ``None``
    into (True, False or None for the wrappers; the authentication identity)."""
    run = _Run(event, args)
    verdict: bool | None = None
    authc = claimed
    outcome = AUTH_ERROR
    reply = AUTH_TEMPFAIL
    try:
        result = await run.handlers(until=_decided)
        verdict, authc = await decide(result)
    except Reject as error:
        reply = error.reply
        outcome = error.auth_outcome or (AUTH_FAILURE if reply.startswith("5") else AUTH_ERROR)
        verdict = False if outcome == AUTH_FAILURE else None
    except Exception as error:
        _log_failure(event, meta, AUTH_TEMPFAIL, error, secret)
        verdict = None
    else:
        if verdict is True:
            outcome, reply = AUTH_SUCCESS, AUTH_SUCCESS_REPLY
        elif verdict is False:
            outcome, reply = AUTH_FAILURE, AUTH_INVALID
    try:
        refusal = await run.finish(verdict)
    except Exception as error:
        _log_failure(event, meta, AUTH_TEMPFAIL, error, secret)
        refusal = Reject(454, AUTH_TEMPFAIL[4:])
        refusal.auth_outcome = AUTH_ERROR
    if refusal is not None:
        reply = refusal.reply
        outcome = refusal.auth_outcome or (AUTH_FAILURE if reply.startswith("5") else AUTH_ERROR)
    if outcome != AUTH_SUCCESS:
        authc = claimed
    meta.record_auth(mechanism, authz or authc, authc, outcome)
    await _hold_reply(meta)
    success = outcome == AUTH_SUCCESS
    return AuthVerdict(
        success, reply, authz=(authz or authc) if success else "", authc=authc if success else ""
    )


async def mail_from(address: str, meta: ConnectionMeta) -> str | None:
    """MAIL FROM: None to accept (a new transaction begins), or the refusal."""
    sender = EnvelopeAddress(address)
    meta.transaction = Transaction(sender)
    refusal = await _simple(MAIL_FROM, (sender, meta), meta, TEMPFAIL)
    if refusal is not None:
        meta.transaction = None
    return refusal


async def rcpt_to(address: str, meta: ConnectionMeta) -> str | None:
    """RCPT TO: None to accept the recipient, or the refusal."""
    recipient = EnvelopeAddress(address)
    refusal = await _simple(RCPT_TO, (recipient, meta), meta, TEMPFAIL)
    if refusal is None and meta.transaction is not None:
        meta.transaction.recipients.append(recipient)
    return refusal


async def data(message: Message, meta: ConnectionMeta) -> str | None:
    """After DATA, before the trace header: None to go on, or the refusal. The
    recipients are fixed from here on; a message left with none is refused."""
    refusal = await _simple(DATA, (message, meta), meta, TEMPFAIL)
    if refusal is not None:
        return refusal
    try:
        if not message.freeze_recipients():
            return NO_RECIPIENTS
    except ValueError as error:
        _log_failure(DATA, meta, TEMPFAIL, error)
        return TEMPFAIL
    return None


async def message_received(
    message: Message, meta: ConnectionMeta, store: Callable[[Message], Awaitable[str]]
) -> str:
    """After the trace header: the handlers, then ``store`` (the spool commit, which gives
    the 250), then the wrappers learn whether the message was stored."""
    run = _Run(MESSAGE_RECEIVED, (message, meta))
    try:
        await run.handlers()
    except Reject as error:
        await _finish_quietly(run, False, meta)
        await _hold_reply(meta)
        return error.reply
    except Exception as error:
        _log_failure(MESSAGE_RECEIVED, meta, TEMPFAIL, error)
        await _finish_quietly(run, False, meta)
        await _hold_reply(meta)
        return TEMPFAIL
    reply = await store(message)
    # The message is stored (or not) now: a wrapper can no longer change the answer.
    await _finish_quietly(run, reply.startswith("2"), meta)
    await _hold_reply(meta)
    return reply


def oauth_offered() -> bool:
    """Whether AUTH OAUTHBEARER and XOAUTH2 are offered: a validator is configured
    (``KUMOSUBMIT["OAUTH"]["VALIDATOR"]``), or a handler of the project's answers."""
    if app_settings.oauth["VALIDATOR"]:
        return True
    default = registry.DEFAULT_AUTHENTICATORS[AUTH_OAUTHBEARER]
    return any(
        not handler.wrapper and handler.name != default
        for handler in registry.chain(AUTH_OAUTHBEARER)
    )


def oauth_scope() -> str:
    """The scope named in the error challenge."""
    return str(app_settings.oauth["SCOPE"])


def oauth_openid_configuration() -> str | None:
    """The discovery document's URL named in the error challenge, if any."""
    value = app_settings.oauth["OPENID_CONFIGURATION"]
    return str(value) if value else None


def rewrites_responses() -> bool:
    return registry.has_handlers(REWRITE_RESPONSE)


async def rewrite_response(
    status: int, response: str, command: str | None, meta: ConnectionMeta
) -> tuple[int, str]:
    """Let the handlers change a reply's code or text (each returns None, or a pair in
    which None keeps that part). A failure keeps the reply as it was."""
    for handler in registry.chain(REWRITE_RESPONSE):
        try:
            result = await registry.call(REWRITE_RESPONSE, handler, status, response, command, meta)
            if result is None:
                continue
            new_status, new_response = result
            if new_status is not None:
                if not isinstance(new_status, int) or not 200 <= new_status <= 599:
                    raise ValueError(f"{new_status!r} is not an SMTP reply code")
                status = new_status
            if new_response is not None:
                response = " ".join(str(new_response).split())
        except Exception as error:
            log.error(
                "conn %s: %s failed; the reply is kept:\n%s",
                meta.get("conn_id"),
                REWRITE_RESPONSE,
                "".join(traceback.format_exception(error)),
            )
    return status, response
