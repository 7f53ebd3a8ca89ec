"""What the external-provider validators share: HTTP off the event loop, and claims to logins."""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kumosubmit.conf import app_settings
from kumosubmit.credentials.service import active_login
from kumosubmit.db import run_db
from kumosubmit.oauth import ACCEPTED, NO_LOGIN, WRONG_SCOPE, has_scope

#: Threads that wait on the provider: requests beyond these wait their turn (and time out).
HTTP_THREADS = 4
#: Largest answer read from the provider.
MAX_RESPONSE = 1024 * 1024


class ProviderError(Exception):
    """The provider could not be asked, or gave an answer that is not JSON (454)."""


@functools.cache
def _executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=HTTP_THREADS, thread_name_prefix="kumosubmit-oauth")


def _fetch(url: str, data: bytes | None, headers: dict[str, str], timeout: float) -> Any:
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 (checked: E053)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read(MAX_RESPONSE + 1)
    except OSError as error:  # URLError, HTTPError, timeouts
        # The error text names the URL, never the token (it is in the body only).
        raise ProviderError(f"{url}: {error}") from None
    if len(body) > MAX_RESPONSE:
        raise ProviderError(f"{url}: the answer is larger than {MAX_RESPONSE} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise ProviderError(f"{url}: the answer is not JSON") from None


async def fetch_json(
    url: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> Any:
    """GET (or POST ``form``) ``url`` in a thread, within ``OAUTH["HTTP_TIMEOUT"]``."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    all_headers = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
    timeout = float(app_settings.oauth["HTTP_TIMEOUT"])
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_executor(), _fetch, url, data, all_headers, timeout)
    # The socket timeout bounds each read; this bounds the whole (a queue wait included).
    try:
        async with asyncio.timeout(timeout * 2):
            return await future
    except TimeoutError:
        raise ProviderError(f"{url}: no answer within {timeout * 2} s") from None


def _active_username(name: str) -> str | None:
    login = active_login(name).only("username").first()
    return login.username if login is not None else None


async def login_from_claims(claims: dict[str, Any]) -> tuple[str | bool, dict[str, Any]]:
    """The active SMTP login named by ``OAUTH["LOGIN_CLAIM"]``, if the scope is there."""
    settings = app_settings.oauth
    details: dict[str, Any] = {}
    if "client_id" in claims or "azp" in claims:
        details["application"] = str(claims.get("client_id") or claims.get("azp"))
    granted = claims.get("scope") or claims.get("scp")
    if not has_scope(granted, settings["SCOPE"]):
        return False, {"result": WRONG_SCOPE, **details}
    name = claims.get(settings["LOGIN_CLAIM"])
    if not isinstance(name, str) or not name:
        return False, {"result": NO_LOGIN, **details}
    username = await run_db(_active_username, name)
    if username is None:
        return False, {"result": NO_LOGIN, "claimed": name[:255], **details}
    return username, {"result": ACCEPTED, **details}
