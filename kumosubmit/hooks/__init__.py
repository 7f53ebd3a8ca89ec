"""Policy hooks, in KumoMTA's style.

    from kumosubmit.hooks import on

    @on("smtp_server_auth_plain")
    async def check(authz, authc, password, conn_meta):
        return authc == "alice" and password == "..."

A handler may be sync or async. Registering one replaces the built-in
handler; ``KUMOSUBMIT["HOOKS"]`` names handlers by dotted path instead.
"""

from kumosubmit.hooks.registry import EVENTS, call, get_handler, on, reset

__all__ = ["EVENTS", "call", "get_handler", "on", "reset"]
