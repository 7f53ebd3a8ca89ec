"""What real SMTP clients do when a server caps the messages of one connection.

Run from the repository root:

    .venv/bin/python bench/cap_replies.py [--cap 3] [--messages 5] [--json]

A plain aiosmtpd server on loopback (no TLS, no AUTH: the reply is what is
measured) accepts ``--cap`` messages per connection and answers every MAIL
after that with one candidate reply; a 421 is followed by the server closing
the connection, as RFC 5321 section 3.8 says it must. Each client sends
``--messages`` messages over one connection:

- Django's SMTP email backend, ``send_messages()`` (what ``send_mass_mail()`` calls),
  with ``fail_silently`` False and True;
- smtplib, ``sendmail()`` in a loop on one ``SMTP`` object, carrying on after an error;
- aiosmtplib, ``SMTP.sendmail()`` in a loop on one connection, carrying on after an error.

For each it prints what the caller saw (a return value or the exception and its
code), how many messages the server stored, and whether the caller can tell which
messages went through. docs/security.md ("Messages per connection") records the
result; ``tests/test_cap_replies.py`` runs this and checks that record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import smtplib
import sys
import threading
from typing import Any

from aiosmtpd.controller import Controller

#: The replies a capped MAIL could get.
CANDIDATES = (
    "421 4.7.0 Too many messages in one connection, please reconnect",
    "451 4.7.1 Too many messages in one connection, please reconnect",
    "452 4.5.3 Too many messages in one connection",
    "450 4.7.1 Too many messages in one connection, please reconnect",
)


class CappingHandler:
    """Accept ``cap`` messages per connection, then answer MAIL with ``reply``."""

    def __init__(self, cap: int, reply: str) -> None:
        self.cap = cap
        self.reply = reply
        self.stored = 0
        self.lock = threading.Lock()

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        accepted = getattr(session, "accepted", 0)
        if accepted >= self.cap:
            if self.reply.startswith("421"):
                # Close once the reply is written (the transport flushes it first).
                asyncio.get_running_loop().call_later(0.05, server.transport.close)
            return self.reply
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        session.accepted = getattr(session, "accepted", 0) + 1
        with self.lock:
            self.stored += 1
        return "250 2.0.0 OK"


def _describe(error: BaseException) -> str:
    code = getattr(error, "smtp_code", None) or getattr(error, "code", None)
    return f"{type(error).__name__}({code})" if code else type(error).__name__


def run_django(port: int, count: int, fail_silently: bool) -> dict[str, Any]:
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    from django.core.mail import EmailMessage, get_connection

    connection = get_connection(
        "django.core.mail.backends.smtp.EmailBackend",
        host="127.0.0.1",
        port=port,
        fail_silently=fail_silently,
        timeout=10,
    )
    messages = [
        EmailMessage(f"message {n}", "body", "alice@example.com", ["bob@example.org"])
        for n in range(count)
    ]
    try:
        sent = connection.send_messages(messages)
    except Exception as error:
        return {"caller_saw": f"raised {_describe(error)}", "count_known": False}
    return {"caller_saw": f"returned {sent}", "count_known": True}


def run_smtplib(port: int, count: int) -> dict[str, Any]:
    outcomes = []
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    for n in range(count):
        try:
            client.sendmail("alice@example.com", ["bob@example.org"], f"Subject: {n}\r\n\r\nb\r\n")
            outcomes.append("ok")
        except smtplib.SMTPException as error:
            outcomes.append(_describe(error))
    try:
        client.quit()
    except smtplib.SMTPServerDisconnected:
        pass
    return {"caller_saw": ", ".join(outcomes), "count_known": True}


def run_aiosmtplib(port: int, count: int) -> dict[str, Any]:
    import aiosmtplib

    async def main() -> list[str]:
        outcomes = []
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
        await client.connect()
        for n in range(count):
            try:
                await client.sendmail(
                    "alice@example.com", ["bob@example.org"], f"Subject: {n}\r\n\r\nb\r\n"
                )
                outcomes.append("ok")
            except aiosmtplib.SMTPException as error:
                outcomes.append(_describe(error))
        if client.is_connected:
            try:
                await client.quit()
            except aiosmtplib.SMTPException:
                pass
        return outcomes

    return {"caller_saw": ", ".join(asyncio.run(main())), "count_known": True}


CLIENTS = {
    "django send_messages": lambda port, count: run_django(port, count, fail_silently=False),
    "django send_messages fail_silently": lambda port, count: run_django(port, count, True),
    "smtplib sendmail loop": run_smtplib,
    "aiosmtplib sendmail loop": run_aiosmtplib,
}


def measure(cap: int, count: int, port: int) -> list[dict[str, Any]]:
    rows = []
    for reply in CANDIDATES:
        for name, client in CLIENTS.items():
            handler = CappingHandler(cap, reply)
            controller = Controller(handler, hostname="127.0.0.1", port=port)
            controller.start()
            try:
                result = client(port, count)
            finally:
                controller.stop()
            rows.append({"reply": reply[:9], "client": name, "stored": handler.stored, **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--port", type=int, default=2599)
    parser.add_argument("--json", action="store_true", help="One JSON list instead of a table.")
    args = parser.parse_args()
    rows = measure(args.cap, args.messages, args.port)
    if args.json:
        json.dump(rows, sys.stdout)
        return
    print(f"cap {args.cap}, {args.messages} messages over one connection")
    for row in rows:
        print(f"{row['reply']:<10} {row['client']:<36} stored {row['stored']}: {row['caller_saw']}")


if __name__ == "__main__":
    main()
