"""Policy as KumoMTA's SMTP listener events, in Python.

    from kumosubmit.hooks import on, reject

    @on("smtp_server_mail_from")
    async def no_example_org(sender, conn_meta):
        if sender.domain == "example.org":
            reject(550, "5.7.1 not from that domain")

Every event has a chain of handlers: the built-ins, then those named in
``KUMOSUBMIT["HOOKS"]``, then those registered with :func:`on`
(kumosubmit/hooks/registry.py; docs/hooks.md). A handler may be sync or
async; :func:`reject` refuses the command with exactly the reply given.
"""

from kumosubmit.hooks.events import AuthVerdict, Transaction, delay_reply
from kumosubmit.hooks.message import EnvelopeAddress, Message
from kumosubmit.hooks.registry import (
    BUILTINS,
    EVENTS,
    get_handler,
    get_handlers,
    on,
    override,
    reset,
)
from kumosubmit.hooks.reject import Reject, reject

__all__ = [
    "BUILTINS",
    "EVENTS",
    "AuthVerdict",
    "EnvelopeAddress",
    "Message",
    "Reject",
    "Transaction",
    "delay_reply",
    "get_handler",
    "get_handlers",
    "on",
    "override",
    "reject",
    "reset",
]
