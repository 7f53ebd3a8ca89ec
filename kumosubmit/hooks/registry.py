"""Which handlers an event has, in which order, and calling one of them.

The chain of an event is, in this order:

1. its built-in handlers: ``KUMOSUBMIT["BUILTIN_HOOKS"][event]`` (dotted paths;
   the defaults are in :data:`BUILTINS`, and a project drops or replaces them
   by setting the event's list);
2. the project's handlers named in ``KUMOSUBMIT["HOOKS"][event]`` (a dotted
   path, or a list of them);
3. handlers registered with :func:`on`, in the order they were registered.

One more rule, for the authentication events: the built-in login check
(:data:`DEFAULT_AUTHENTICATORS`) answers only when the project names no handler
of its own for the event (wrappers do not count: they only observe). A project
that registers an ``smtp_server_auth_plain`` handler decides who gets in, as in
KumoMTA; to keep the database logins behind
it, it lists ``kumosubmit.credentials.service.authenticate`` after its own (for
``smtp_server_auth_oauthbearer``, ``kumosubmit.oauth.validate``).

A handler that is an async generator function is a *wrapper*: the part before
its ``yield`` runs in its place in the chain, the part after it once the
event's outcome is known (in reverse order), and receives that outcome
(:mod:`kumosubmit.hooks.events` says what it is for each event).

Every call is bounded by ``KUMOSUBMIT["HOOK_TIMEOUT"]``. A project's handler
that takes longer is abandoned and the caller gets :class:`TimeoutError`: an
async one is cancelled; a sync one runs in a small pool of its own, never in
the thread that does the server's ORM work, so a hung one cannot stall the
database for every other session. Python cannot stop a thread, though, so a
hung sync handler keeps its pool thread until it returns; when every pool
thread is hung, further sync calls wait in the queue and time out too, which
is the safe failure. Built-in handlers and wrappers are ours, run on the
event loop, and are cancelled at the same deadline; a built-in may be a plain
function that returns an awaitable only when it has something to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections
from django.utils.module_loading import import_string

from kumosubmit.conf import app_settings, clears_on_setting_change

#: The events, KumoMTA's names, with the arguments their handlers get, in the order a
#: session meets them.
EVENTS: dict[str, str] = {
    "smtp_server_connection_accepted": "(conn_meta)",
    "smtp_server_ehlo": "(domain, conn_meta, extensions) -> list of extensions or None",
    "smtp_server_auth_plain": "(authz, authc, password, conn_meta) -> bool or None",
    "smtp_server_auth_oauthbearer": "(authz, token, conn_meta) -> login name, False or None",
    "smtp_server_mail_from": "(sender, conn_meta)",
    "smtp_server_rcpt_to": "(recipient, conn_meta)",
    "smtp_server_data": "(message, conn_meta)",
    "smtp_server_message_received": "(message, conn_meta)",
    "smtp_server_rewrite_response": "(status, response, command, conn_meta) -> (status, response)",
}

#: The built-in handlers of each event (``KUMOSUBMIT["BUILTIN_HOOKS"]`` replaces an
#: event's list). One module per concern, under kumosubmit/policy/.
BUILTINS: dict[str, list[str]] = {
    "smtp_server_auth_plain": [
        "kumosubmit.policy.penalties.auth_plain",
        "kumosubmit.policy.decoys.auth_plain",
        "kumosubmit.policy.lanes.auth_plain",
        # Once the login is in: what its messages need, read while AUTH waits anyway.
        "kumosubmit.policy.senders.auth_plain",
        "kumosubmit.policy.sendlimits.auth_plain",
    ],
    "smtp_server_auth_oauthbearer": [
        "kumosubmit.policy.penalties.auth_oauthbearer",
        "kumosubmit.policy.lanes.auth_oauthbearer",
    ],
    "smtp_server_mail_from": [
        "kumosubmit.policy.limits.mail_from",
        "kumosubmit.policy.senders.mail_from",
        # Last, so a sender refused by the policy above reserves nothing.
        "kumosubmit.policy.sendlimits.mail_from",
    ],
    "smtp_server_rcpt_to": [
        "kumosubmit.policy.limits.rcpt_to",
        "kumosubmit.policy.sendlimits.rcpt_to",
    ],
    "smtp_server_data": ["kumosubmit.policy.senders.data"],
}

#: The built-in answer of an authentication event, used when the project has no handler.
DEFAULT_AUTHENTICATORS: dict[str, str] = {
    "smtp_server_auth_plain": "kumosubmit.credentials.service.authenticate",
    # The validator KUMOSUBMIT["OAUTH"]["VALIDATOR"] names (kumosubmit/oauth/).
    "smtp_server_auth_oauthbearer": "kumosubmit.oauth.validate",
}

#: Events whose handlers return a value for the next: no wrappers.
PLAIN_ONLY = frozenset({"smtp_server_rewrite_response"})

#: Threads that run sync hook handlers (ThreadPoolExecutor's own default size).
SYNC_HOOK_THREADS = min(32, (os.cpu_count() or 1) + 4)


@dataclass(frozen=True)
class Handler:
    """One handler in a chain."""

    func: Callable[..., Any]
    builtin: bool = False

    @functools.cached_property
    def name(self) -> str:
        return f"{getattr(self.func, '__module__', '?')}.{getattr(self.func, '__qualname__', '?')}"

    @functools.cached_property
    def wrapper(self) -> bool:
        return inspect.isasyncgenfunction(self.func)

    @functools.cached_property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)


_registered: dict[str, list[Callable[..., Any]]] = {}
_overrides: dict[str, tuple[list[Handler] | None, list[Handler]]] = {}


def check_event(event: str) -> None:
    if event not in EVENTS:
        raise ValueError(f"unknown hook event {event!r}; known: {', '.join(EVENTS)}")


def on(event: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add the function to the handlers of ``event`` (after the others)."""
    check_event(event)

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        if event in PLAIN_ONLY and inspect.isasyncgenfunction(func):
            raise ValueError(f"{event} takes plain handlers, not wrappers (async generators)")
        handlers = _registered.setdefault(event, [])
        if func not in handlers:  # a module imported twice registers once
            handlers.append(func)
        chain.cache_clear()
        return func

    return register


def reset(event: str | None = None) -> None:
    """Forget handlers registered with :func:`on` (for one event, or all)."""
    if event is None:
        _registered.clear()
    else:
        _registered.pop(event, None)
    chain.cache_clear()


@contextlib.contextmanager
def override(
    event: str,
    *handlers: Callable[..., Any],
    builtins: Sequence[Callable[..., Any] | str] | None = None,
) -> Iterator[None]:
    """Within the block, ``event`` has exactly these project handlers (settings and
    :func:`on` are set aside) and, if ``builtins`` is given, these built-ins.

    For tests, as Django's ``override_settings``::

        with hooks.override("smtp_server_mail_from", my_rule, builtins=[]):
            ...
    """
    check_event(event)
    previous = _overrides.get(event)
    builtin_handlers = None if builtins is None else [_builtin(item) for item in builtins]
    _overrides[event] = (builtin_handlers, [Handler(func) for func in handlers])
    chain.cache_clear()
    try:
        yield
    finally:
        if previous is None:
            _overrides.pop(event, None)
        else:
            _overrides[event] = previous
        chain.cache_clear()


def _builtin(item: Callable[..., Any] | str) -> Handler:
    func = import_string(item) if isinstance(item, str) else item
    # Only kumosubmit's own code runs as a built-in (on the event loop, cancelled when
    # late); a project's handler listed among them is still run as a project's.
    return Handler(func, builtin=getattr(func, "__module__", "").startswith("kumosubmit."))


def _paths(value: str | Sequence[str] | None) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


@clears_on_setting_change
@functools.cache
def chain(event: str) -> tuple[Handler, ...]:
    """The handlers of ``event``, in the order they run (resolved once, until a change)."""
    check_event(event)
    builtins: list[Handler] | None = None
    project: list[Handler] | None = None
    if event in _overrides:
        builtins, project = _overrides[event]
    if builtins is None:
        configured = app_settings.BUILTIN_HOOKS or {}
        paths = configured[event] if event in configured else BUILTINS.get(event, [])
        builtins = [_builtin(path) for path in _paths(paths)]
    if project is None:
        project = [Handler(import_string(path)) for path in _paths(app_settings.HOOKS.get(event))]
        project += [Handler(func) for func in _registered.get(event, ())]
    if event in DEFAULT_AUTHENTICATORS and all(handler.wrapper for handler in project):
        # No handler of the project's answers (wrappers only observe): the built-in does.
        project = [*project, _builtin(DEFAULT_AUTHENTICATORS[event])]
    if event in PLAIN_ONLY and any(handler.wrapper for handler in (*builtins, *project)):
        raise ValueError(f"{event} takes plain handlers, not wrappers (async generators)")
    return (*builtins, *project)


def get_handlers(event: str) -> list[Callable[..., Any]]:
    """The functions that handle ``event`` now, in order."""
    return [handler.func for handler in chain(event)]


def get_handler(event: str) -> Callable[..., Any]:
    """The last handler of ``event`` (for an AUTH event, the one that answers by default)."""
    return chain(event)[-1].func


def has_handlers(event: str) -> bool:
    return bool(chain(event))


@functools.cache
def _sync_executor() -> ThreadPoolExecutor:
    # Made once per process (a new pool per call would be unbounded: STYLE.md, Modoboa).
    return ThreadPoolExecutor(max_workers=SYNC_HOOK_THREADS, thread_name_prefix="kumosubmit-hook")


def _run_sync(func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    # As Django does around a request: a handler that uses the ORM gets a working
    # connection in this pool thread.
    close_old_connections()
    try:
        return func(*args)
    finally:
        close_old_connections()


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    # An abandoned call may still fail later; that must not be logged as
    # "exception was never retrieved".
    if not task.cancelled():
        task.exception()


def _late(event: str, timeout: float | None) -> TimeoutError:
    return TimeoutError(f"the {event} hook took more than {timeout} s")


async def bounded(event: str, awaitable: Any) -> Any:
    """Await ``awaitable`` (our own code) within HOOK_TIMEOUT, cancelling it when late."""
    timeout: float | None = app_settings.HOOK_TIMEOUT
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        raise _late(event, timeout) from None


async def call(event: str, handler: Handler, *args: Any) -> Any:
    """Call one plain handler and return its result (or raise what it raises).

    Raises :class:`TimeoutError` if it takes more than ``HOOK_TIMEOUT`` seconds
    (``None`` waits for ever).
    """
    if handler.builtin:
        # A built-in that may have to wait returns an awaitable only when it does (the
        # sender policy, once it is read): the common case costs no timer.
        result = handler.func(*args)
        if inspect.isawaitable(result):
            return await bounded(event, result)
        return result
    timeout: float | None = app_settings.HOOK_TIMEOUT
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any]
    if handler.is_async:
        future = loop.create_task(handler.func(*args))
    else:
        context = contextvars.copy_context()
        future = loop.run_in_executor(
            _sync_executor(), functools.partial(context.run, _run_sync, handler.func, args)
        )
    try:
        # Not asyncio.wait_for: on Python 3.11 it waits for the cancelled handler to
        # finish, for ever if the handler ignores the cancellation.
        done, _ = await asyncio.wait({future}, timeout=timeout)
    except asyncio.CancelledError:  # the session went away meanwhile
        future.cancel()
        future.add_done_callback(_consume_outcome)
        raise
    if not done:
        future.cancel()  # a queued sync call never starts; a running one is abandoned
        future.add_done_callback(_consume_outcome)
        raise _late(event, timeout)
    return future.result()
