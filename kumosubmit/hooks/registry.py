"""Which function handles each hook event, and calling it.

One handler per event, found in this order: the last one registered with
:func:`on`, else the dotted path in ``KUMOSUBMIT["HOOKS"]``, else the built-in.

Every call is bounded by ``KUMOSUBMIT["HOOK_TIMEOUT"]``: a handler that takes
longer is abandoned and the caller gets :class:`TimeoutError` (AUTH answers
``454 4.7.0``). An async handler is cancelled. A sync handler runs in a small
pool of its own, never in the thread that does the server's ORM work, so a
hung one cannot stall the database for every other session; Python cannot
stop a thread, though, so a hung sync handler keeps its pool thread until it
returns. When every pool thread is hung, further sync calls wait in the queue
and time out too (454), which is the safe failure: no accept, no unbounded
thread growth.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import close_old_connections
from django.utils.module_loading import import_string

from kumosubmit.conf import app_settings, clears_on_setting_change

#: Event name -> dotted path of the built-in handler.
EVENTS: dict[str, str] = {
    # (authz, authc, password, conn_meta) -> bool
    "smtp_server_auth_plain": "kumosubmit.credentials.service.authenticate",
}

#: Threads that run sync hook handlers (ThreadPoolExecutor's own default size).
SYNC_HOOK_THREADS = min(32, (os.cpu_count() or 1) + 4)

_registered: dict[str, Callable[..., Any]] = {}


def _check_event(event: str) -> None:
    if event not in EVENTS:
        raise ValueError(f"unknown hook event {event!r}; known: {', '.join(sorted(EVENTS))}")


def on(event: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make the function the handler of ``event``, replacing the built-in."""
    _check_event(event)

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        _registered[event] = func
        return func

    return register


def reset(event: str | None = None) -> None:
    """Forget handlers registered with :func:`on` (for one event, or all)."""
    if event is None:
        _registered.clear()
    else:
        _registered.pop(event, None)


@clears_on_setting_change
@functools.cache
def _configured(event: str) -> Callable[..., Any]:
    return import_string(app_settings.HOOKS.get(event) or EVENTS[event])


def get_handler(event: str) -> Callable[..., Any]:
    """The function that currently handles ``event``."""
    _check_event(event)
    return _registered.get(event) or _configured(event)


@functools.cache
def _sync_executor() -> ThreadPoolExecutor:
    # Made once per process (a new pool per call would be unbounded: STYLE.md, Modoboa).
    return ThreadPoolExecutor(max_workers=SYNC_HOOK_THREADS, thread_name_prefix="kumosubmit-hook")


def _run_sync(handler: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    # As Django does around a request (and channels around database_sync_to_async):
    # a handler that uses the ORM gets a working connection in this pool thread.
    close_old_connections()
    try:
        return handler(*args)
    finally:
        close_old_connections()


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    # An abandoned call may still fail later; that must not be logged as
    # "exception was never retrieved".
    if not task.cancelled():
        task.exception()


async def call(event: str, *args: Any) -> Any:
    """Call the handler of ``event`` and return its result.

    Raises :class:`TimeoutError` if it takes more than ``HOOK_TIMEOUT`` seconds
    (``None`` waits for ever), and whatever the handler raises.
    """
    handler = get_handler(event)
    timeout: float | None = app_settings.HOOK_TIMEOUT
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any]
    if inspect.iscoroutinefunction(handler):
        future = loop.create_task(handler(*args))
    else:
        context = contextvars.copy_context()
        future = loop.run_in_executor(
            _sync_executor(), functools.partial(context.run, _run_sync, handler, args)
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
        raise TimeoutError(f"the {event} hook took more than {timeout} s")
    return future.result()
