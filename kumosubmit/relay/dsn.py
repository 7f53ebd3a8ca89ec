"""Delivery status notifications (RFC 3464): the report a sender gets when mail fails.

Built with the stdlib ``email`` package as a ``multipart/report;
report-type=delivery-status`` with three parts: a note for people, the
``message/delivery-status`` fields for programs, and the failed message's
header (``text/rfc822-headers``, RFC 6522), which is enough to tell which message
it was without sending a large message back.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from datetime import datetime
from email.charset import QP, Charset
from email.message import Message as EmailMessage
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, make_msgid

#: The most of the failed message's header section a DSN carries.
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient the relay gave up on, with what the upstream (or the network) said."""

    address: str
    status: str  # RFC 3463, e.g. "5.1.1", or "4.4.7" when the message grew too old
    reply: str  # "550 5.1.1 no such user", or the network error
    at: datetime


def header_section(content: bytes) -> bytes:
    """The header of a raw message: everything before the first empty line (capped)."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[: end + 2]
    return head[:MAX_HEADER_BYTES]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _address_field(address: str) -> str:
    """An address field of message/delivery-status, which is ASCII only.

    RFC 6533: a non-ASCII address is typed utf-8 and written as
    utf-8-addr-xtext, each character outside printable ASCII as ``\\x{HEX}``.
    """
    if address.isascii():
        return f"rfc822; {address}"
    xtext = "".join(
        c if 33 <= ord(c) <= 126 and c not in "\\+=" else f"\\x{{{ord(c):X}}}" for c in address
    )
    return f"utf-8; {xtext}"


def _part(part: MIMEBase) -> MIMEBase:
    del part["MIME-Version"]  # only the top level carries it (RFC 2045)
    return part


def _diagnostic(reply: str) -> str:
    reply = _one_line(reply)
    is_smtp = len(reply) >= 3 and reply[:3].isdigit()
    return f"{'smtp' if is_smtp else 'X-kumosubmit'}; {reply}"


def build_dsn(
    *,
    original: bytes,
    sender: str,
    queue_id: str,
    arrival: datetime,
    failed: list[FailedRecipient],
    reporting_mta: str,
    remote_mta: str,
    now: datetime,
) -> bytes:
    """The bytes of a failure DSN to ``sender`` about ``failed`` (CRLF line endings)."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = f"<{sender}>"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(now)
    report["Message-ID"] = make_msgid(domain=reporting_mta)
    # RFC 3834: an automatic reply, which other robots must not answer.
    report["Auto-Submitted"] = "auto-replied"

    lines = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients, and",
        "will not be retried for them. The relevant reply from the next mail",
        "server (or the network error) follows each address.",
        "",
    ]
    lines += [f"<{r.address}>: {_one_line(r.reply)}" for r in failed]
    text = "\n".join(lines) + "\n"
    if text.isascii():
        report.attach(_part(MIMEText(text, "plain", "us-ascii")))
    else:  # quoted-printable keeps it readable in the raw message
        charset = Charset("utf-8")
        charset.body_encoding = QP
        report.attach(_part(MIMEText(text, "plain", charset)))

    per_message = EmailMessage()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_message["X-kumosubmit-Queue-ID"] = queue_id
    per_message["Arrival-Date"] = format_datetime(arrival)
    fields = [per_message]
    for recipient in failed:
        block = EmailMessage()
        block["Final-Recipient"] = _address_field(recipient.address)
        block["Action"] = "failed"
        block["Status"] = recipient.status
        block["Remote-MTA"] = f"dns; {_one_line(remote_mta)}"
        block["Diagnostic-Code"] = _diagnostic(recipient.reply)
        block["Last-Attempt-Date"] = format_datetime(recipient.at)
        fields.append(block)
    status = MIMEBase("message", "delivery-status")
    status.set_payload(fields)
    report.attach(_part(status))

    head = header_section(original)
    headers = MIMEBase("text", "rfc822-headers")
    if head.isascii():
        headers.set_payload(head.decode("ascii"))
        headers["Content-Transfer-Encoding"] = "7bit"
    else:  # an SMTPUTF8 or 8-bit header: keep it readable, as Postfix does
        headers.set_payload(head.decode("utf-8", "replace"), charset="utf-8")
    report.attach(_part(headers))
    # Non-ASCII addresses (RFC 6531/6533) stay UTF-8: the DSN travels as SMTPUTF8 mail.
    utf8 = not (sender.isascii() and all(r.reply.isascii() for r in failed))
    return report.as_bytes(policy=email.policy.SMTPUTF8 if utf8 else email.policy.SMTP)
