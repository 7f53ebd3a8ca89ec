"""Telling a login's owner and the site's admins that a limit was reached: compose, deliver.

:func:`compose` makes a :class:`Notice` (who, subject, text); :func:`deliver`
sends it the way ``KUMOSUBMIT["SEND_LIMITS_NOTICE"]`` says: ``"spool"`` stores
it in kumosubmit's own queue (the spool's Message row; the relay sends it on like
any other message), ``"email_backend"`` hands it to Django's ``EMAIL_BACKEND``,
``None`` sends nothing. The callers make sure it is sent once per rule and window
(:meth:`~kumosubmit.sendlimits.backends.SendLimitBackend.claim_notice`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid

from django.conf import settings
from django.core.mail import EmailMessage
from django.urls import NoReverseMatch, reverse

from kumosubmit.conf import app_settings

log = logging.getLogger("kumosubmit.sendlimits")

SPOOL = "spool"
EMAIL_BACKEND = "email_backend"
DELIVERIES = (SPOOL, EMAIL_BACKEND, None)


@dataclass(frozen=True)
class Notice:
    """One message to the owner and the admins."""

    subject: str
    body: str
    recipients: tuple[str, ...]
    #: What the stored message's meta says it is (``kumosubmit_notice``).
    reason: str = "send_limit"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def sender(self) -> str:
        return str(getattr(settings, "SERVER_EMAIL", "") or "root@localhost")


def admin_addresses() -> list[str]:
    """The addresses in ``settings.ADMINS`` (``(name, address)`` pairs or addresses)."""
    addresses = []
    for entry in getattr(settings, "ADMINS", ()) or ():
        address = entry[1] if isinstance(entry, list | tuple) else entry
        if address:
            addresses.append(str(address))
    return addresses


def page_url(name: str, *args: object) -> str:
    """A page's address: ``SITE_URL`` and the path, or the path alone ('' if not routed)."""
    try:
        path = reverse(name, args=args)
    except NoReverseMatch:
        return ""
    return f"{(app_settings.SITE_URL or '').rstrip('/')}{path}"


def compose(subject: str, lines: list[str], owner: str | None, reason: str) -> Notice | None:
    """A notice to ``owner`` (if any) and the admins; None if it has nobody to go to."""
    recipients: list[str] = []
    for address in [owner, *admin_addresses()]:
        if address and address.lower() not in {r.lower() for r in recipients}:
            recipients.append(address)
    if not recipients:
        return None
    body = "\n".join(lines) + "\n\n-- \nkumosubmit\n"
    return Notice(
        subject=f"[kumosubmit] {subject}", body=body, recipients=tuple(recipients), reason=reason
    )


def _email(notice: Notice) -> EmailMessage:
    return EmailMessage(
        subject=notice.subject,
        body=notice.body,
        from_email=notice.sender,
        to=list(notice.recipients),
        headers={
            "Date": formatdate(localtime=False),
            "Message-ID": make_msgid(domain=app_settings.HOSTNAME or None),
            "Auto-Submitted": "auto-generated",  # RFC 3834: no auto-replies to it
            **notice.headers,
        },
    )


async def deliver(notice: Notice, how: str | None = None) -> str | None:
    """Send ``notice`` (``how``: the setting by default); the queue id when spooled."""
    how = app_settings.SEND_LIMITS_NOTICE if how is None else how
    if how is None:
        return None
    email = _email(notice)
    if how == EMAIL_BACKEND:
        from kumosubmit.db import run_db

        await run_db(email.send)
        return None
    from kumosubmit.spool import SpooledMessage, get_spool

    message = SpooledMessage(
        mail_from=notice.sender,
        rcpt_tos=list(notice.recipients),
        content=email.message().as_bytes(linesep="\r\n"),
        meta={"kumosubmit_notice": notice.reason, "authz_id": "", "authn_id": "", "conn_id": ""},
    )
    await get_spool().store(message)
    log.info("notice %r stored as %s for %s", notice.subject, message.queue_id, notice.recipients)
    return message.queue_id
