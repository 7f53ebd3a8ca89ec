"""Real mail clients with tokens against a real ``runsmtpd``: curl and msmtp.

curl's ``--oauth2-bearer`` sends AUTH OAUTHBEARER when the server offers it
(XOAUTH2 when only that is offered); msmtp's ``auth oauthbearer`` and ``auth xoauth2``
read the token with ``passwordeval``. Every token comes from a real
``manage.py createsmtptoken`` process. The server logs everything at DEBUG (SQL
with its parameters included), and neither its log nor its output nor any table
holds a token afterwards.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from oauth2_provider.models import AccessToken

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.models import SmtpLogin
from kumosubmit.oauth.models import SmtpToken
from kumosubmit.spool.models import Message
from tests.live import free_port
from tests.process import ROOT, ManageProcess, command_env, manage
from tests.security.test_secrets import debug_settings

ALICE = "alice@example.com"
BOB = "bob@example.com"
MESSAGE = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: token\r\n\r\nsent with a token\r\n"

CURL = shutil.which("curl")
MSMTP = shutil.which("msmtp")


class Server:
    def __init__(
        self, process: ManageProcess, port: int, env: dict[str, str], log: Path, mechanism: str
    ) -> None:
        self.process, self.port, self.env, self.log = process, port, env, log
        #: What curl chooses: the first of OAUTHBEARER and XOAUTH2 the server offers.
        self.mechanism = mechanism

    def createsmtptoken(self, *args: str) -> str:
        result = manage("createsmtptoken", *args, env=self.env)
        assert result.returncode == 0, result.stderr
        assert "shown only now" in result.stderr
        return result.stdout.strip()


def xoauth2_only(domain, conn_meta, extensions):
    """smtp_server_ehlo in the runsmtpd of these tests: offer XOAUTH2, not OAUTHBEARER (as
    Gmail long did), so that curl sends XOAUTH2."""
    return [line.replace(" OAUTHBEARER", "") for line in extensions]


@pytest.fixture(params=["OAUTHBEARER", "XOAUTH2"])
def server(request, tmp_path: Path, pki, make_login, secret_watch) -> Iterator[Server]:
    """runsmtpd offering both token mechanisms, or (param XOAUTH2) XOAUTH2 only."""
    owner = User.objects.create_user("alice", "alice@example.org", "site password of alice")
    login = make_login(ALICE, "own password of alice")
    login.owner = owner
    login.save(update_fields=["owner"])
    log = tmp_path / "runsmtpd.log"
    env = command_env(tmp_path / "data")
    env["DJANGO_SETTINGS_MODULE"] = module = debug_settings(tmp_path, log)
    if request.param == "XOAUTH2":
        with (tmp_path / f"{module}.py").open("a") as settings:
            hooks = {"smtp_server_ehlo": "tests.test_oauth_clients.xoauth2_only"}
            settings.write(f"KUMOSUBMIT['HOOKS'] = {hooks!r}\n")
    env["PYTHONPATH"] = f"{tmp_path}:{ROOT}"
    port = free_port()
    process = ManageProcess(
        "runsmtpd", "--listen", f"127.0.0.1:{port}", *pki.cert_args(), "--workers", "1", env=env
    )
    try:
        process.wait_for("listening on")
        yield Server(process, port, env, log, request.param)
        process.signal(signal.SIGTERM)
        assert process.finish() == 0, process.output
    finally:
        process.kill()
    text = log.read_text()
    assert "kumosubmit_smtptoken" in text  # it did log the SQL
    secret_watch.assert_absent_from(text, "the runsmtpd log")
    secret_watch.assert_absent_from(process.output, "runsmtpd's output")


def wait_for_audit_row(timeout: float = 10) -> ConnectionRecord:
    """The audit row runsmtpd writes when the session ends."""
    deadline = time.monotonic() + timeout
    while (record := ConnectionRecord.objects.order_by("-pk").first()) is None:
        assert time.monotonic() < deadline, "no audit row"
        time.sleep(0.05)
    return record


def protocol(trace: str) -> list[str]:
    """The SMTP lines of a curl trace (without its notes and data markers)."""
    return [line for line in trace.splitlines() if line[:2] in ("< ", "> ")]


def error_challenge(trace: str) -> dict[str, str]:
    """The JSON of the 334 that follows the client's AUTH line in a curl trace."""
    match = re.search(r"^< 334 (\S+)\s*$", trace, re.MULTILINE)
    assert match, trace
    return json.loads(base64.b64decode(match.group(1)))


def curl(server: Server, pki, token: str, *options: str) -> subprocess.CompletedProcess[str]:
    if CURL is None:
        pytest.skip("curl is not installed")
    return subprocess.run(
        [
            CURL,
            "--silent",
            "--show-error",
            "--verbose",
            "--url",
            f"smtp://localhost:{server.port}",
            "--ssl-reqd",
            "--cacert",
            str(pki.ca_cert),
            "--user",
            ALICE,
            "--oauth2-bearer",
            token,
            "--mail-from",
            ALICE,
            "--mail-rcpt",
            BOB,
            "--upload-file",
            "-",
            *options,
        ],
        input=MESSAGE,
        capture_output=True,
        text=True,
        timeout=60,
    )


def msmtp(
    server: Server, pki, tmp_path: Path, token: str, auth: str = "oauthbearer"
) -> subprocess.CompletedProcess[str]:
    if MSMTP is None:
        pytest.skip("msmtp is not installed")
    token_file = tmp_path / "token"
    token_file.write_text(token)
    config = tmp_path / "msmtprc"
    config.write_text(
        "account kumosubmit\n"
        "host localhost\n"
        f"port {server.port}\n"
        "tls on\n"
        "tls_starttls on\n"
        f"tls_trust_file {pki.ca_cert}\n"
        f"auth {auth}\n"
        f"user {ALICE}\n"
        f"passwordeval cat {token_file}\n"
        f"from {ALICE}\n"
        "account default : kumosubmit\n"
    )
    config.chmod(0o600)
    return subprocess.run(
        [MSMTP, "--file", str(config), "--debug", BOB],
        input=MESSAGE,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- curl --------------------------------------------------------------------------------


def test_curl_sends_with_a_good_token(server, pki, secret_watch):
    mechanism = server.mechanism
    token = server.createsmtptoken(ALICE, "--expires", "1")
    secret_watch.add_bearer(ALICE, token)
    result = curl(server, pki, token)
    assert result.returncode == 0, result.stderr
    assert f"> AUTH {mechanism}" in result.stderr, "\n".join(protocol(result.stderr))
    assert "< 235 2.7.0 Authentication successful" in result.stderr
    assert re.search(r"^< 250 2\.0\.0 OK queued as \w+", result.stderr, re.MULTILINE)
    assert Message.objects.get().mail_from == ALICE
    assert SmtpToken.objects.get().last_used_at is not None


def spoil(case: str, token: str) -> None:
    if case == "revoked":
        from kumosubmit.oauth.tokens import revoke_smtp_token

        revoke_smtp_token(SmtpToken.objects.get())
    elif case == "expired":
        AccessToken.objects.update(expires=timezone.now() - timedelta(seconds=1))
    elif case == "wrong scope":
        AccessToken.objects.update(scope="read")


@pytest.mark.parametrize("case", ["revoked", "expired", "wrong scope"])
def test_curl_bad_token_gets_the_error_challenge_and_535(server, pki, secret_watch, case):
    mechanism = server.mechanism
    token = server.createsmtptoken(ALICE)
    secret_watch.add_bearer(ALICE, token)
    spoil(case, token)
    result = curl(server, pki, token)
    assert f"> AUTH {mechanism}" in result.stderr
    assert result.returncode == 67, result.stderr  # CURLE_LOGIN_DENIED
    # RFC 7628 section 3.2.2: 334 with the JSON status, the client's dummy reply, then 535.
    assert error_challenge(result.stderr) == {"status": "invalid_token", "scope": "smtp"}
    lines = protocol(result.stderr)
    at = next(i for i, line in enumerate(lines) if line.startswith("< 334 ey"))
    if mechanism == "OAUTHBEARER":
        assert lines[at + 1 :] == ["> AQ==", "< 535 5.7.8 Authentication credentials invalid"]
    else:
        # curl gives up at an XOAUTH2 challenge without the empty reply: login denied.
        assert lines[at + 1 :] == []
    assert not Message.objects.exists()
    record = wait_for_audit_row()
    assert record.auth_outcome == "failure"
    assert record.meta["auth_attempts"][-1]["mechanism"] == mechanism
    result_noted = record.meta["auth_credentials"][-1]["result"]
    assert result_noted == {"wrong scope": "wrong_scope"}.get(case, case)


# -- msmtp -------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["OAUTHBEARER"], indirect=True)
@pytest.mark.parametrize("auth", ["oauthbearer", "xoauth2"])
def test_msmtp_sends_with_a_good_token(server, pki, tmp_path, secret_watch, auth):
    token = server.createsmtptoken(ALICE, "--expires", "30")
    secret_watch.add_bearer(ALICE, token)
    result = msmtp(server, pki, tmp_path, token, auth)
    assert result.returncode == 0, result.stderr + result.stdout
    trace = result.stderr + result.stdout
    assert f"AUTH {auth.upper()}" in trace
    assert "235 2.7.0 Authentication successful" in trace
    assert Message.objects.get().mail_from == ALICE


@pytest.mark.parametrize("server", ["OAUTHBEARER"], indirect=True)
@pytest.mark.parametrize("case", ["revoked", "expired", "wrong scope"])
@pytest.mark.parametrize("auth", ["oauthbearer", "xoauth2"])
def test_msmtp_bad_token_gets_535(server, pki, tmp_path, secret_watch, case, auth):
    token = server.createsmtptoken(ALICE)
    secret_watch.add_bearer(ALICE, token)
    spoil(case, token)
    result = msmtp(server, pki, tmp_path, token, auth)
    assert result.returncode != 0
    trace = result.stderr + result.stdout
    match = re.search(r"<-- 334 (\S+)", trace)
    assert match, trace
    assert json.loads(base64.b64decode(match.group(1)))["status"] == "invalid_token"
    assert "535 5.7.8 Authentication credentials invalid" in trace
    assert not Message.objects.exists()
    assert SmtpLogin.objects.get().last_used_at is None
