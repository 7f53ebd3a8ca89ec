"""Notices to owners: what happened to their credentials, from where, and where to undo it.

Each notice is a short plain-text e-mail with ``Auto-Submitted: auto-generated``
(RFC 3834). By default it is stored in kumosubmit's own queue through the
configured spool (``get_spool().store()``, the path an accepted message takes),
so ``runrelay`` delivers it like any other message; with
``NOTICES["DELIVERY"] = "email"`` it goes through Django's ``EMAIL_BACKEND``
instead. Every kind has its own switch in ``KUMOSUBMIT["NOTICES"]``.

The web pages send "a new app password was created" and "the second factor was
removed"; the SMTP side calls :func:`anew_address_used` after a good AUTH and
:func:`alogin_blocked` when a block starts (with sync twins for other callers).
A notice that cannot be sent is logged and never breaks what caused it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.mail import EmailMessage as DjangoEmailMessage
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from kumosubmit.audit.models import SeenAddress
from kumosubmit.conf import DEFAULTS, app_settings
from kumosubmit.credentials import throttle
from kumosubmit.credentials.models import AppPassword, SmtpLogin
from kumosubmit.spool import SpooledMessage, get_spool
from kumosubmit.spool.orm import DatabaseSpool, store_together

log = logging.getLogger(__name__)

KINDS = (
    "APP_PASSWORD_CREATED",
    "SECOND_FACTOR_REMOVED",
    "NEW_ADDRESS",
    "LOGIN_BLOCKED",
    "DECOY_USED",
)


def settings_dict() -> dict[str, Any]:
    """``KUMOSUBMIT["NOTICES"]`` over the defaults (checked by kumosubmit.E075)."""
    return {**DEFAULTS["NOTICES"], **(app_settings.NOTICES or {})}


def enabled(kind: str) -> bool:
    return bool(settings_dict()[kind])


@dataclass(frozen=True)
class Notice:
    """One composed notice: to whom, about what, and the text."""

    kind: str
    to: str
    subject: str
    body: str

    def sender(self) -> str:
        configured = settings_dict()["FROM"]
        if configured:
            return str(configured)
        if settings_dict()["DELIVERY"] == "email":
            return str(settings.DEFAULT_FROM_EMAIL)
        return f"postmaster@{app_settings.HOSTNAME or socket.getfqdn()}"

    def as_bytes(self) -> bytes:
        """The message as the queue stores it: CRLF line ends, a Message-ID, a Date."""
        message = EmailMessage(policy=SMTP)
        sender = self.sender()
        message["From"] = sender
        message["To"] = self.to
        message["Subject"] = self.subject
        message["Date"] = format_datetime(timezone.now())
        message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(self.body)
        return message.as_bytes()

    def spooled(self) -> SpooledMessage:
        return SpooledMessage(
            mail_from=self.sender(),
            rcpt_tos=[self.to],
            content=self.as_bytes(),
            meta={"notice": self.kind},
        )

    def send_email(self) -> None:
        DjangoEmailMessage(
            self.subject,
            self.body,
            self.sender(),
            [self.to],
            headers={"Auto-Submitted": "auto-generated"},
        ).send()


def deliver(notice: Notice) -> None:
    """Queue or e-mail the notice (from synchronous code: a view, a command)."""
    try:
        if settings_dict()["DELIVERY"] == "email":
            notice.send_email()
            return
        spool = get_spool()
        if isinstance(spool, DatabaseSpool):
            # What the database spool's group commit runs for a batch, here in this
            # thread and its transaction: the same row, the same message_stored signal.
            store_together([notice.spooled()])
        else:
            async_to_sync(spool.store)(notice.spooled())
    except Exception:
        log.exception("notice %s to %s could not be sent", notice.kind, notice.to)


async def adeliver(notice: Notice) -> None:
    """Queue or e-mail the notice (from the SMTP server's event loop)."""
    try:
        if settings_dict()["DELIVERY"] == "email":
            await sync_to_async(notice.send_email, thread_sensitive=False)()
        else:
            await get_spool().store(notice.spooled())
    except Exception:
        log.exception("notice %s to %s could not be sent", notice.kind, notice.to)


# -- composing -------------------------------------------------------------------------


def _link(path: str, request: HttpRequest | None = None) -> str:
    """An absolute link to a page: from the request, else NOTICES["SITE_URL"]."""
    if request is not None:
        return request.build_absolute_uri(path)
    site = settings_dict()["SITE_URL"]
    return f"{str(site).rstrip('/')}{path}" if site else path


def _when(moment: datetime) -> str:
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M:%S %Z}"


def owner_address(login: SmtpLogin) -> str | None:
    """Where a login's notices go: its owner's e-mail, else the login if it is an address."""
    owner = login.owner
    if owner is not None and getattr(owner, "email", ""):
        return str(owner.email)
    return login.username if "@" in login.username else None


def _client(request: HttpRequest | None) -> str:
    if request is None:
        return "unknown"
    from kumosubmit.web.addresses import client_address

    return client_address(request) or "unknown"


def app_password_created(request: HttpRequest | None, app_password: AppPassword) -> bool:
    """Tell the owner of the login that an app password was made for it (whether sent)."""
    login = app_password.login
    to = owner_address(login)
    if not enabled("APP_PASSWORD_CREATED") or not to:
        return False
    page = _link(reverse("credentials:login", args=[login.pk]), request)
    deliver(
        Notice(
            "APP_PASSWORD_CREATED",
            to,
            f"New app password for {login.username}",
            f"A new app password, “{app_password.label}”, was created for the login "
            f"{login.username} at {_when(app_password.created_at)} from {_client(request)}.\n\n"
            f"If this was not you, revoke it here and change your site password:\n{page}\n",
        )
    )
    return True


def second_factor_removed(request: HttpRequest | None, user: Any, what: str) -> bool:
    """Tell a site user that one of their second factors was removed (whether sent)."""
    to = getattr(user, "email", "")
    if not enabled("SECOND_FACTOR_REMOVED") or not to:
        return False
    page = _link(reverse("credentials:security"), request)
    deliver(
        Notice(
            "SECOND_FACTOR_REMOVED",
            str(to),
            "A second factor was removed from your account",
            f"{what} was removed from the account {user.get_username()} at "
            f"{_when(timezone.now())} from {_client(request)}.\n\n"
            f"If this was not you, sign in, set up your second factor again and change your "
            f"password:\n{page}\n",
        )
    )
    return True


# -- for the SMTP side -----------------------------------------------------------------


def note_address(login: SmtpLogin, address: str) -> bool:
    """Record that the login was used from this address; True if that is new for it.

    The very first address a login is used from is recorded without being
    called new: its owner is setting it up. Decided by the database (a unique
    pair), so a notice goes out once however many processes see the address.
    """
    network = throttle.address_key(address, throttle.policy().ipv6_prefix)
    if network is None:
        return False
    if SeenAddress.objects.filter(login=login, network=network).exists():
        return False
    first = not SeenAddress.objects.filter(login=login).exists()
    try:
        with transaction.atomic():
            SeenAddress.objects.create(login=login, network=network)
    except IntegrityError:  # another process recorded it first, and told the owner
        return False
    return not first


def _new_address_notice(login: SmtpLogin, address: str, credential: str) -> Notice | None:
    # Recorded even while the notice is off, so that turning it on later does not call
    # every usual address new.
    if not note_address(login, address) or not enabled("NEW_ADDRESS"):
        return None
    to = owner_address(login)
    if not to:
        return None
    used = f" with {credential}" if credential else ""
    page = _link(reverse("credentials:login", args=[login.pk]))
    return Notice(
        "NEW_ADDRESS",
        to,
        f"{login.username} was used from a new address",
        f"The login {login.username} was used{used} from {address}, an address it had not "
        f"been used from before, at {_when(timezone.now())}.\n\n"
        f"If this was not you, revoke the app password or change the password here:\n{page}\n",
    )


def new_address_used(login: SmtpLogin, address: str, *, credential: str = "") -> bool:
    """After a good AUTH: tell the owner if this address (or IPv6 /64) is new for the login."""
    notice = _new_address_notice(login, address, credential)
    if notice is not None:
        deliver(notice)
    return notice is not None


async def anew_address_used(login: SmtpLogin, address: str, *, credential: str = "") -> bool:
    """:func:`new_address_used` from the event loop: the database off it, the spool on it."""
    from kumosubmit.db import run_db

    notice = await run_db(_new_address_notice, login, address, credential)
    if notice is not None:
        await adeliver(notice)
    return notice is not None


def _blocked_notice(login: SmtpLogin, address: str | None, until: datetime) -> Notice | None:
    to = owner_address(login)
    if not enabled("LOGIN_BLOCKED") or not to:
        return None
    page = _link(reverse("credentials:login", args=[login.pk]))
    return Notice(
        "LOGIN_BLOCKED",
        to,
        f"{login.username} was blocked after failed sign-ins",
        f"Too many wrong passwords were tried for the login {login.username}"
        f"{f' (the last from {address})' if address else ''}; it is blocked for the addresses "
        f"that tried them until {_when(until)}. You can still use it from your usual places.\n\n"
        f"If you did not try these, someone is guessing; see the recent sign-ins here:\n{page}\n",
    )


def login_blocked(login: SmtpLogin, address: str | None, until: datetime) -> bool:
    """When a block starts on a login (call once per block): tell its owner."""
    notice = _blocked_notice(login, address, until)
    if notice is not None:
        deliver(notice)
    return notice is not None


async def alogin_blocked(login: SmtpLogin, address: str | None, until: datetime) -> bool:
    from kumosubmit.db import run_db

    notice = await run_db(_blocked_notice, login, address, until)
    if notice is not None:
        await adeliver(notice)
    return notice is not None


# -- from the SMTP side ---------------------------------------------------------------


def _decoy_notices(username: str, address: str | None, until: datetime | None) -> list[Notice]:
    if not enabled("DECOY_USED"):
        return []
    page = _link(reverse("admin:kumosubmit_authfailurecounter_changelist"))
    where = address or "an unknown address"
    blocked = f"That address is blocked on every host until {_when(until)}; " if until else ""
    body = (
        f"The decoy login {username} was tried at SMTP AUTH from {where}. No one has a "
        "reason to use it: whoever did holds a list of logins that includes it (a leak, or "
        f"a guess from a directory).\n\n{blocked}the blocks, with an action to lift them, "
        f"are here:\n{page}\n"
    )
    return [
        Notice("DECOY_USED", email, f"Decoy login {username} tried from {address}", body)
        for _, email in settings.ADMINS
    ]


async def adecoy_used(username: str, address: str | None, until: datetime | None) -> int:
    """Alert the site's ADMINS that a decoy login was tried (from the event loop)."""
    notices = _decoy_notices(username, address, until)
    for notice in notices:
        await adeliver(notice)
    return len(notices)


def _new_address_notice_of(login_pk: int, address: str, credential: str) -> Notice | None:
    login = SmtpLogin.objects.select_related("owner").filter(pk=login_pk).first()
    return _new_address_notice(login, address, credential) if login is not None else None


async def anew_address_used_by(login_pk: int, address: str, *, credential: str = "") -> bool:
    """:func:`anew_address_used` for a login known by its primary key (the AUTH path)."""
    from kumosubmit.db import run_db

    notice = await run_db(_new_address_notice_of, login_pk, address, credential)
    if notice is not None:
        await adeliver(notice)
    return notice is not None


def _blocked_notice_of(username: str, address: str | None, until: datetime) -> Notice | None:
    login = SmtpLogin.objects.select_related("owner").filter(username=username).first()
    return _blocked_notice(login, address, until) if login is not None else None


async def alogin_blocked_by_name(username: str, address: str | None, until: datetime) -> bool:
    """:func:`alogin_blocked` for a login known by its (case-folded) name; none: nothing."""
    from kumosubmit.db import run_db

    notice = await run_db(_blocked_notice_of, username, address, until)
    if notice is not None:
        await adeliver(notice)
    return notice is not None


#: Notices on their way from the SMTP side, held so the tasks are not collected early.
_sending: set[asyncio.Task[Any]] = set()


def send_soon(coroutine: Coroutine[Any, Any, Any]) -> None:
    """Send a notice without holding up the reply that caused it."""
    task = asyncio.get_running_loop().create_task(coroutine)
    _sending.add(task)
    task.add_done_callback(_sending.discard)
