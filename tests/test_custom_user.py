"""A project whose user model is keyed by email and has no ``username``: commands, pages, admin.

Real processes on their own SQLite database with ``tests.customuser.settings``
(``AUTH_USER_MODEL = "customuser.EmailUser"``): migrate, createsuperuser,
createsmtpuser --owner, then ``runserver`` driven over HTTP.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.live import free_port
from tests.process import ManageProcess, command_env, manage
from tests.webclient import WebClient

OWNER = "boss@example.org"
SITE_PASSWORD = "site password of the boss"
LOGIN = "alice@example.com"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = command_env(tmp_path / "data", database=f"sqlite:///{tmp_path / 'custom.sqlite3'}")
    env["DJANGO_SETTINGS_MODULE"] = "tests.customuser.settings"
    return env


def run(*args: str, env: dict[str, str], input: str | None = None) -> str:
    done = manage(*args, env=env, input=input)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_user_model_keyed_by_email_works_in_commands_pages_and_admin(env):
    run("migrate", "--no-input", env=env)
    run(
        "createsuperuser",
        "--no-input",
        "--email",
        OWNER,
        env={**env, "DJANGO_SUPERUSER_PASSWORD": SITE_PASSWORD},
    )
    out = run(
        "createsmtpuser",
        LOGIN,
        "--owner",
        OWNER,
        "--password-stdin",
        env=env,
        input="an SMTP password\n",
    )
    assert f"Created SMTP login {LOGIN}" in out
    missing = manage("createsmtpuser", "bob@example.com", "--owner", "nobody@x.org", env=env)
    assert "There is no Django user 'nobody@x.org'" in missing.stderr

    port = free_port()
    server = ManageProcess("runserver", f"127.0.0.1:{port}", "--noreload", env=env)
    try:
        server.wait_for("Quit the server with")
        web = WebClient(f"http://127.0.0.1:{port}")
        form = web.get("/credentials/")
        assert form.url.endswith("/accounts/login/?next=/credentials/")
        assert 'name="username"' in form.text  # Django names the field so for any model
        logins = web.post(
            "/accounts/login/?next=/credentials/",
            {"username": OWNER, "password": SITE_PASSWORD, "next": "/credentials/"},
            form_page=form,
        )
        assert logins.status == 200, logins.text
        assert LOGIN in logins.text
        assert OWNER in logins.text  # the header shows get_username()
        login_id = re.search(r'href="/credentials/(\d+)/"', logins.text).group(1)
        detail = web.get(f"/credentials/{login_id}/")
        created = web.post(
            f"/credentials/{login_id}/app-passwords/new/",
            {"label": "Phone", "expires": ""},
            form_page=detail,
        )
        assert created.status == 200
        assert re.search(r'<code id="new-app-password">ksub_', created.text)

        # The admin's login search looks in the owner's email (there is no username).
        for query in ("boss@", "alice"):
            found = web.get(f"/admin/kumosubmit/smtplogin/?q={query}")
            assert found.status == 200, found.text[:3000]
            assert f">{LOGIN}</a>" in found.text
        nothing = web.get("/admin/kumosubmit/smtplogin/?q=carol")
        assert nothing.status == 200
        assert f">{LOGIN}</a>" not in nothing.text
        assert web.get("/admin/kumosubmit/apppassword/?q=Phone").status == 200
    finally:
        server.signal(signal.SIGTERM)
        server.finish()
