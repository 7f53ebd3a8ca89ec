"""The wheel, installed into a fresh virtualenv, in a host project that is not this repository.

Builds the wheel from a copy of what it is made of (pyproject.toml, README.md, LICENSE,
kumosubmit/), installs it with pip into a new virtualenv (its dependencies from the
package index, as a user gets them), copies ``tests/hostproject/`` out of the
repository, and drives it through real processes and real HTTP: migrate, check,
createsmtpuser, runsmtpd with AUTH and a message over STARTTLS, runserver with the
sign-in page, an app password made on the pages and used at AUTH, and the admin's
audit CSV export. Nothing of the repository is on the host project's path.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import venv
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from tests.live import free_port
from tests.process import ROOT
from tests.webclient import WebClient

HOST_PROJECT = ROOT / "tests" / "hostproject"
SITE_USER, SITE_PASSWORD = "admin", "site password of the admin"
LOGIN, SMTP_PASSWORD = "alice@example.com", "an SMTP password for alice"

pytestmark = pytest.mark.timeout(900)


def missing(what: str) -> None:
    """Skip on a developer's machine without the tooling; CI must run this test."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}, and CI must run this test")
    pytest.skip(what)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built by pip from a copy of its sources (the work tree stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "kumosubmit",
        source / "kumosubmit",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = tmp_path_factory.mktemp("wheel")
    try:
        import pip  # noqa: F401
    except ImportError:
        missing("pip is not installed in the test environment")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [built] = out.glob("kumosubmit-*.whl")
    return built


# -- what the wheel holds ------------------------------------------------------------------


def test_the_wheel_holds_what_the_app_needs_and_says_what_it_is(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    for template in (
        "kumosubmit/base.html",
        "kumosubmit/credentials/index.html",
        "kumosubmit/credentials/login_detail.html",
        "kumosubmit/credentials/_last_use.html",
        "kumosubmit/registration/login.html",
        "kumosubmit/registration/password_change_form.html",
        "admin/kumosubmit/connectionrecord/change_list.html",
        "admin/kumosubmit/connectionrecord/export.html",
        "admin/kumosubmit/smtplogin/change_password.html",
    ):
        assert f"kumosubmit/templates/{template}" in names, template
    assert "kumosubmit/py.typed" in names
    assert "kumosubmit/migrations/0001_initial.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("project/", "tests/", "templates/"))]

    assert metadata["License-Expression"] == "MIT"
    requires = metadata.get_all("Requires-Dist")
    assert "Django>=5.2" in requires  # no pin below the next release
    unconditional = [r for r in requires if "extra ==" not in r]
    for name in ("psycopg", "whitenoise", "dj-database-url", "pytest", "playwright", "ruff"):
        assert not [r for r in unconditional if r.lower().startswith(name)], name
    assert 'psycopg[binary]>=3.1; extra == "postgres"' in requires
    assert {r for r in requires if 'extra == "site"' in r} == {
        'dj-database-url>=2.1; extra == "site"',
        'whitenoise>=6.6; extra == "site"',
    }
    classifiers = metadata.get_all("Classifier")
    assert "Framework :: Django :: 5.2" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert urls["Source"] == "https://github.com/kumosubmit/kumosubmit"
    assert {"Documentation", "Issues", "Changelog"} <= set(urls)
    # The long description is the README, and its links work outside the repository.
    description = metadata.get_payload()
    assert description.startswith("# kumosubmit")
    relative = re.findall(r"\]\((?!https?://|#)([^)]*)\)", description)
    assert relative == []


# -- a host project on the installed wheel --------------------------------------------------


class Host:
    """The host project's folder and the fresh virtualenv it runs in."""

    def __init__(self, folder: Path, python: Path) -> None:
        self.folder = folder
        self.python = python
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV", "DATABASE_URL")
            and not key.startswith("KUMOSUBMIT")
        }
        self.env["PYTHONUNBUFFERED"] = "1"
        self.processes: list[subprocess.Popen[bytes]] = []

    def manage(self, *args: str, input: str | None = None, **env: str) -> str:
        done = subprocess.run(
            [str(self.python), "manage.py", *args],
            cwd=self.folder,
            env={**self.env, **env},
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"manage.py {args}:\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def start(self, *args: str, ready: str) -> tuple[subprocess.Popen[bytes], str]:
        """A long-running manage.py command, once it has printed ``ready``; and its output."""
        process = subprocess.Popen(
            [str(self.python), "manage.py", *args],
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        assert process.stdout is not None
        seen = b""
        deadline = time.monotonic() + 60
        while ready.encode() not in seen:
            line = process.stdout.readline()
            if not line or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"manage.py {args} did not start:\n{seen.decode()}")
            seen += line
        return process, seen.decode(errors="replace")

    def stop(self, process: subprocess.Popen[bytes]) -> tuple[int, str]:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        return process.returncode, rest.decode(errors="replace")


@pytest.fixture(scope="module")
def host(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """A fresh virtualenv with the wheel installed, and a copy of tests/hostproject/."""
    base = tmp_path_factory.mktemp("host")
    environment = base / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    python = environment / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 and "No matching distribution" in done.stderr:
        missing(f"the package index is out of reach:\n{done.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    folder = base / "project"
    shutil.copytree(HOST_PROJECT, folder, ignore=shutil.ignore_patterns("__pycache__"))
    running = Host(folder, python)
    yield running
    for process in running.processes:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def smtp_client(host: Host, port: int) -> smtplib.SMTP:
    context = ssl.create_default_context(cafile=str(host.folder / "var" / "selfsigned-cert.pem"))
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
    client.starttls(context=context)
    return client


def test_a_host_project_runs_on_the_installed_wheel(host):
    where = host.manage("shell", "-c", "import kumosubmit; print(kumosubmit.__file__)")
    assert "site-packages" in where
    assert str(ROOT) not in where
    # The example project's extras are not forced on a host project.
    absent = (
        "import importlib.util as u; "
        "print([u.find_spec(m) for m in ('whitenoise', 'dj_database_url', 'psycopg')])"
    )
    assert host.manage("shell", "-c", absent).splitlines()[-1] == "[None, None, None]"

    host.manage("migrate", "--no-input")
    checked = host.manage("check")
    # What the host project has not set yet, each with the setting that fixes it.
    assert "kumosubmit.W050" in checked
    assert 'LOGIN_URL = "credentials:sign_in"' in checked
    assert "kumosubmit.W051" in checked
    if (os.cpu_count() or 1) > 1:  # WORKERS defaults to one per CPU; SQLite here has no WAL
        assert "kumosubmit.W053" in checked
    host.manage(
        "createsuperuser",
        "--no-input",
        "--username",
        SITE_USER,
        "--email",
        "admin@example.org",
        DJANGO_SUPERUSER_PASSWORD=SITE_PASSWORD,
    )
    created = host.manage(
        "createsmtpuser", LOGIN, "--owner", SITE_USER, "--password-stdin", input=SMTP_PASSWORD
    )
    assert f"Created SMTP login {LOGIN}." in created

    # runsmtpd: a self-signed certificate in the data folder, AUTH, one message.
    smtp_port = free_port()
    smtpd, started = host.start(
        "runsmtpd",
        "--listen",
        f"127.0.0.1:{smtp_port}",
        "--hostname",
        "localhost",
        "--workers",
        "1",
        ready="listening on",
    )
    assert "kumosubmit.W053" not in started  # one worker: the check counts --workers
    assert "kumosubmit.W050" in started  # runsmtpd runs the checks too
    with smtp_client(host, smtp_port) as client:
        assert client.login(LOGIN, SMTP_PASSWORD)[0] == 235
        assert client.sendmail(LOGIN, ["bob@example.org"], b"Subject: one\r\n\r\nbody\r\n") == {}

    # The pages: the app's own sign-in page (the host has none), then an app password.
    web_port = free_port()
    host.start("runserver", f"127.0.0.1:{web_port}", "--noreload", ready="Quit the server")
    web = WebClient(f"http://127.0.0.1:{web_port}")
    form = web.get("/credentials/")
    assert form.status == 200
    assert form.url.endswith("/credentials/sign-in/?next=/credentials/")
    logins = web.post(
        "/credentials/sign-in/?next=/credentials/",
        {"username": SITE_USER, "password": SITE_PASSWORD, "next": "/credentials/"},
        form_page=form,
    )
    assert logins.status == 200, logins.text
    assert LOGIN in logins.text
    login_id = re.search(r'href="/credentials/(\d+)/"', logins.text).group(1)
    detail = web.get(f"/credentials/{login_id}/")
    assert detail.status == 200
    created_page = web.post(
        f"/credentials/{login_id}/app-passwords/new/",
        {"label": "Laptop", "expires": ""},
        form_page=detail,
    )
    assert created_page.status == 200
    app_password = re.search(r'<code id="new-app-password">([^<]+)</code>', created_page.text)
    assert app_password
    with smtp_client(host, smtp_port) as client:
        assert client.login(LOGIN, app_password.group(1))[0] == 235
        assert client.sendmail(LOGIN, ["carol@example.org"], b"Subject: two\r\n\r\nb\r\n") == {}

    # The admin: the audit log's change list has the export, and the export is a CSV.
    changelist = web.get("/admin/kumosubmit/connectionrecord/")
    assert changelist.status == 200
    assert 'href="/admin/kumosubmit/connectionrecord/export/"' in changelist.text
    assert "Export as CSV" in changelist.text
    assert web.get("/admin/kumosubmit/connectionrecord/export/").status == 200
    today = time.strftime("%Y-%m-%d", time.gmtime())
    rows: list[dict[str, str]] = []
    deadline = time.monotonic() + 20
    while len(rows) < 2 and time.monotonic() < deadline:  # rows are written after the session
        export = web.get(f"/admin/kumosubmit/connectionrecord/export/?start={today}&end={today}")
        assert export.status == 200
        assert export.content_type == "text/csv; charset=utf-8"
        rows = list(csv.DictReader(io.StringIO(export.text)))
        time.sleep(0.2)
    assert [row["auth_outcome"] for row in rows] == ["success", "success"]
    assert re.fullmatch(r"app password \d+ \(Laptop\): accepted", rows[1]["auth_credential"])
    stored = web.get("/admin/kumosubmit/message/")
    assert stored.status == 200
    assert "bob@example.org" in stored.text
    assert "carol@example.org" in stored.text

    code, output = host.stop(smtpd)
    assert code == 0, output
    assert "Stopped." in output
