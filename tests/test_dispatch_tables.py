"""aiosmtpd's per-session dispatch tables, built from our short ``dir()`` lists, miss nothing.

``SubmissionSMTP`` and ``SubmissionHandler`` list only their commands, hooks and AUTH
mechanisms in ``dir()`` (aiosmtpd introspects every new session). These compare the
tables with what the full attribute lists would have given.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl

from kumosubmit.protocol.listener import Listener, SubmissionServer


def _every(obj: object, prefix: str) -> dict[str, object]:
    """The attributes of ``obj`` named ``prefix...``, from its whole, unshortened dir()."""
    return {name: getattr(obj, name) for name in object.__dir__(obj) if name.startswith(prefix)}


def _new_session():
    async def make():
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server = SubmissionServer([Listener("127.0.0.1", 0, False)], context, hostname="test")
        return server, server._factory(server.listeners[0])

    return asyncio.run(make())


def test_every_command_hook_and_mechanism_is_in_the_tables():
    server, session = _new_session()
    commands = {name.removeprefix("smtp_") for name in _every(session, "smtp_")}
    assert set(session._smtp_methods) == commands
    assert {"EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"} <= commands

    hooks = {name.removeprefix("handle_") for name in _every(server.handler, "handle_")}
    assert set(session._handle_hooks) == hooks
    assert {"EHLO", "MAIL", "RCPT", "DATA"} <= hooks

    mechanisms = {}
    for obj in (session, server.handler):
        for name, method in _every(obj, "auth_").items():
            mechanism = getattr(method, "__auth_mechanism_name__", name[5:].replace("__", "-"))
            mechanisms[mechanism] = obj is session
    assert {name: impl.is_builtin for name, impl in session._auth_methods.items()} == mechanisms
    assert mechanisms["PLAIN"] is False  # ours, not aiosmtpd's built-in one


def test_the_ehlo_hook_keeps_its_real_signature():
    server, session = _new_session()
    assert session._ehlo_hook_ver == "new"
    hook = type(server.handler).handle_EHLO
    assert list(inspect.signature(hook).parameters) == [
        "self",
        "server",
        "session",
        "envelope",
        "hostname",
        "responses",
    ]
