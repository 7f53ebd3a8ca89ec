"""Would this pass? One session's events run in process, with no socket and no writes.

``manage.py smtppolicy`` and the admin's "Would this pass?" form run the same
handler chains a live session runs, in the same order, and report each
event's verdict and the reply the client would get. ``conn_meta["dry_run"]``
is True: the built-in handlers then read but never write (no failure counted,
no last use recorded, no message stored), and a project's handler can do the
same. No audit row is written, as no connection ends.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from typing import Any

from kumosubmit.addresses import BAD_RECIPIENT, BAD_SENDER, is_mailbox, is_recipient
from kumosubmit.conf import app_settings
from kumosubmit.hooks import events
from kumosubmit.hooks.message import Message, trace_header
from kumosubmit.meta import ConnectionMeta

DRY_RUN = "dry_run"


def is_dry_run(conn_meta: dict[str, Any]) -> bool:
    """Whether this is a dry run, in which handlers must not write anything."""
    return bool(conn_meta.get(DRY_RUN))


@dataclass(frozen=True)
class Step:
    event: str
    argument: str
    verdict: str  # "accepted", "refused", "skipped"
    reply: str


@dataclass
class DryRun:
    """What the session came to: each step, and whether the message would be queued."""

    steps: list[Step] = field(default_factory=list)
    accepted: bool = False
    conn_meta: dict[str, Any] = field(default_factory=dict)

    def report(self) -> str:
        width = max((len(s.event) for s in self.steps), default=0)
        lines = [
            f"{s.event:<{width}}  {s.argument:<30}  {s.verdict:<8}  {s.reply}" for s in self.steps
        ]
        lines.append("would be accepted" if self.accepted else "would be refused")
        return "\n".join(lines)


def _normalized(content: bytes) -> bytearray:
    """As the DATA reader leaves a message: CRLF line endings, ending with one."""
    lines = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return bytearray(b"".join(line + b"\r\n" for line in lines))


def sample_message(mail_from: str, rcpts: list[str]) -> bytes:
    return (
        f"From: <{mail_from}>\r\nTo: {', '.join(f'<{r}>' for r in rcpts)}\r\n"
        f"Subject: smtppolicy dry run\r\nDate: {formatdate()}\r\n"
        f"Message-ID: {make_msgid(domain='dry-run.invalid')}\r\n\r\n(dry run)\r\n"
    ).encode()


class _Session:
    def __init__(self, result: DryRun, meta: ConnectionMeta) -> None:
        self.result = result
        self.meta = meta

    async def step(self, event: str, argument: str, reply: str, command: str | None) -> bool:
        """Note a step with the reply as rewritten; True if it was a success."""
        if not reply[:3].isdigit():  # a step with no reply of its own
            self.result.steps.append(Step(event, argument, "accepted", reply))
            return True
        if events.rewrites_responses():
            code, text = await events.rewrite_response(
                int(reply[:3]), reply[4:], command, self.meta
            )
            reply = f"{code} {text}"
        ok = reply[:1] in "23"
        self.result.steps.append(Step(event, argument, "accepted" if ok else "refused", reply))
        return ok


def _auth_line() -> str:
    if events.oauth_offered():
        return "AUTH LOGIN OAUTHBEARER PLAIN XOAUTH2"
    return "AUTH LOGIN PLAIN"


async def dry_run(
    *,
    peer: str,
    authc: str,
    mail_from: str,
    rcpts: list[str],
    authz: str = "",
    password: str | None = None,
    message: bytes | None = None,
    ehlo: str = "dry-run.invalid",
    token: str | None = None,
) -> DryRun:
    """Run one submission's events; ``password=None`` skips AUTH (as if it succeeded),
    unless a ``token`` is given: then AUTH is OAUTHBEARER with it."""
    hostname = app_settings.HOSTNAME or socket.getfqdn()
    meta = ConnectionMeta(peer=(peer, 0), local=None, listener="dry-run", hostname=hostname)
    meta[DRY_RUN] = True
    meta.set_tls("TLSv1.3", "(dry run)")
    result = DryRun(conn_meta=meta)
    session = _Session(result, meta)
    refusal = await events.connection_accepted(meta)
    if not await session.step(
        events.CONNECTION_ACCEPTED, peer, refusal or f"220 {hostname} ESMTP kumosubmit", None
    ):
        return result
    extensions = await events.ehlo(
        ehlo,
        meta,
        [
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "AUTH LOGIN OAUTHBEARER PLAIN XOAUTH2"
            if events.oauth_offered()
            else "AUTH LOGIN PLAIN",
        ],
        extended=True,
        tls=True,
    )
    reply = extensions if isinstance(extensions, str) else f"250 {hostname}"
    if not await session.step(events.EHLO, ehlo, reply, "EHLO"):
        return result
    if token is not None:
        verdict = await events.auth_oauthbearer("OAUTHBEARER", authz, token, meta)
        if not await session.step(events.AUTH_OAUTHBEARER, authz or authc, verdict.reply, "AUTH"):
            return result
    elif password is None:
        authz = authz or authc
        meta["authz_id"], meta["authn_id"] = authz, authc
        result.steps.append(Step(events.AUTH_PLAIN, authc, "skipped", "(--skip-auth)"))
    else:
        verdict = await events.auth_plain("PLAIN", authz or authc, authc, password, meta)
        if not await session.step(events.AUTH_PLAIN, authc, verdict.reply, "AUTH"):
            return result
    refusal = BAD_SENDER if mail_from and not is_mailbox(mail_from) else None
    refusal = refusal or await events.mail_from(mail_from, meta)
    if not await session.step(
        events.MAIL_FROM, mail_from or "<>", refusal or "250 2.1.0 Sender OK", "MAIL"
    ):
        return result
    accepted = []
    for rcpt in rcpts:
        refusal = BAD_RECIPIENT if not is_recipient(rcpt) else await events.rcpt_to(rcpt, meta)
        if await session.step(events.RCPT_TO, rcpt, refusal or "250 2.1.5 Recipient OK", "RCPT"):
            accepted.append(rcpt)
    if not accepted:
        return result
    content = _normalized(message if message is not None else sample_message(mail_from, accepted))
    msg = Message(mail_from, accepted, content, conn_meta=meta)
    refusal = await events.data(msg, meta)
    if not await session.step(
        events.DATA, f"{len(content)} bytes", refusal or "(on to the trace header)", "DATA"
    ):
        return result
    queue_id = uuid.uuid4().hex
    recipients = msg.freeze_recipients()
    msg.prepend_raw(trace_header(hostname, meta, recipients, queue_id))

    async def store(message: Message) -> str:
        return f"250 2.0.0 OK queued as {queue_id} (dry run: not stored)"

    reply = await events.message_received(msg, meta, store)
    result.accepted = await session.step(
        events.MESSAGE_RECEIVED, ", ".join(recipients), reply, "DATA"
    )
    return result
