"""Fixtures for the self-service pages: site users, their logins, a real browser, runsmtpd.

The browser is the operating system's Chromium (Debian's ``chromium`` package),
driven by Playwright with a fresh profile; Playwright never downloads a browser
here. Without it the browser tests are skipped on a developer's machine, and
fail under CI (``CI`` set), where it must be installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from kumosubmit.credentials.models import SmtpLogin
from tests.live import free_port
from tests.process import ManageProcess, command_env

SITE_PASSWORD = "site password for the web tests"
CHROMIUM = os.environ.get("KUMOSUBMIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
#: Where the browser test saves its screenshots for docs/web.md.
# `make screenshots` sets this to docs/screenshots; otherwise they go to a scratch folder,
# so a test run leaves the work tree clean.
SCREENSHOTS = Path(
    os.environ.get("KUMOSUBMIT_SCREENSHOTS")
    or Path(tempfile.gettempdir()) / "kumosubmit-screenshots"
)


def missing(what: str) -> None:
    """Skip on a developer's machine, fail in CI, where everything must be installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing, and CI must run this test")
    pytest.skip(f"{what} is missing")


def wait_until(condition: Callable[[], Any], timeout: float = 10, what: str = "it") -> Any:
    """Poll ``condition`` until it returns something true (work in another process)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.05)
    return result


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    def make(username: str = "alice") -> User:
        return User.objects.create_user(username, f"{username}@example.org", SITE_PASSWORD)

    return make


@pytest.fixture
def owned_login(make_login: Callable[..., SmtpLogin]) -> Callable[..., SmtpLogin]:
    """A login (its own password watched for leaks) linked to a site user."""

    def make(owner: User, username: str, **kwargs: Any) -> SmtpLogin:
        login = make_login(username, f"own password of {username}", **kwargs)
        login.owner = owner
        login.save(update_fields=["owner"])
        return login

    return make


@pytest.fixture
def signed_in(make_user: Callable[..., User]) -> Callable[[str], tuple[User, Client]]:
    """A site user and a test client signed in as them."""

    def make(username: str = "alice") -> tuple[User, Client]:
        user = make_user(username)
        client = Client()
        client.force_login(user)
        return user, client

    return make


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Any]:
    """Playwright's sync driver, with Django's ORM allowed beside its event loop.

    The sync API keeps an asyncio loop marked as running in this thread, so
    Django would refuse every ORM call of the test ("from an async context").
    The test's ORM calls are plain synchronous code; the allowance ends with
    the module, and no other test runs meanwhile.
    """
    if not Path(CHROMIUM).is_file():
        missing(f"Chromium ({CHROMIUM}; apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package (pip install -e '.[dev]')")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as driver:
            yield driver


@pytest.fixture
def new_browser(playwright_driver: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Open Chromium with a fresh profile: ``new_browser(**context_options)`` -> a context."""
    contexts = []

    def launch(**options: Any) -> Any:
        context = playwright_driver.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            viewport=options.pop("viewport", {"width": 960, "height": 480}),
            locale="en-US",
            timezone_id="UTC",
            **options,
        )
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context

    yield launch
    for context in contexts:
        context.close()


@pytest.fixture
def runsmtpd(tmp_path: Path, pki: Any, transactional_db: None) -> Iterator[int]:
    """A real ``manage.py runsmtpd`` on the test database; yields its STARTTLS port."""
    port = free_port()
    process = ManageProcess(
        "runsmtpd",
        "--listen",
        f"127.0.0.1:{port}",
        *pki.cert_args(),
        "--hostname",
        "localhost",
        "--workers",
        "1",
        env=command_env(tmp_path / "data"),
    )
    try:
        process.wait_for(f"listening on 127.0.0.1:{port}")
        yield port
        process.signal(signal.SIGTERM)
        assert process.finish() == 0, process.output
    finally:
        process.kill()
