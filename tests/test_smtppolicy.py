"""The policy dry run: ``manage.py smtppolicy`` and the admin's "Would this pass?"."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.models import AllowedSender, AuthFailureCounter, SmtpLogin
from kumosubmit.hooks import on, reject
from kumosubmit.spool.models import Message
from tests.process import command_env, manage

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"


@pytest.fixture
def alice(make_login):
    login = make_login(ALICE, PASSWORD)
    AllowedSender.objects.create(login=login, pattern="@alice.example")
    return login


def nothing_written(login: SmtpLogin) -> None:
    login_now = SmtpLogin.objects.get(pk=login.pk)
    assert login_now.last_used_at is None and login_now.password_hash == login.password_hash
    assert not AuthFailureCounter.objects.exists()
    assert not Message.objects.exists()
    assert not ConnectionRecord.objects.exists()


def run(env, *args: str, password: str | None = None):
    options = ["--password-stdin"] if password is not None else ["--skip-auth"]
    return manage(
        "smtppolicy",
        "--peer",
        "192.0.2.7",
        "--authc",
        ALICE,
        *options,
        *args,
        env=env,
        input=None if password is None else password + "\n",
    )


def test_command_accepts_what_the_builtins_accept(alice, tmp_path):
    env = command_env(tmp_path)
    done = run(
        env, "--mail-from", "news@alice.example", "--rcpt", "bob@example.org", password=PASSWORD
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == [
        "smtp_server_connection_accepted",
        "smtp_server_ehlo",
        "smtp_server_auth_plain",
        "smtp_server_mail_from",
        "smtp_server_rcpt_to",
        "smtp_server_data",
        "smtp_server_message_received",
    ]
    assert "235 2.7.0 Authentication successful" in lines[2]
    assert "250 2.0.0 OK queued as" in lines[-2] and "(dry run: not stored)" in lines[-2]
    assert lines[-1] == "would be accepted"
    assert PASSWORD not in done.stdout + done.stderr
    nothing_written(alice)


def test_command_refuses_what_the_builtins_refuse_and_writes_nothing(alice, tmp_path):
    env = command_env(tmp_path)
    done = run(
        env, "--mail-from", "ceo@example.net", "--rcpt", "bob@example.org", password=PASSWORD
    )
    assert done.returncode == 1
    assert "smtp_server_mail_from" in done.stdout
    assert "553 5.7.1 Sender address not allowed for this login" in done.stdout
    assert done.stdout.splitlines()[-1] == "would be refused"

    wrong = run(env, "--mail-from", ALICE, "--rcpt", "bob@example.org", password="not it")
    assert wrong.returncode == 1
    assert "535 5.7.8" in wrong.stdout and "smtp_server_mail_from" not in wrong.stdout
    # A wrong password in a dry run is no failure to count (and waits no penalty delay).
    nothing_written(alice)


def test_command_skips_auth_and_reads_the_message(alice, tmp_path, settings):
    message = tmp_path / "message.eml"
    message.write_bytes(b"From: Someone Else <ceo@example.net>\nSubject: x\n\nbody\n")
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "CHECK_HEADER_FROM": True}
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command(
            "smtppolicy",
            "--peer=192.0.2.7",
            f"--authc={ALICE}",
            "--skip-auth",
            f"--mail-from={ALICE}",
            "--rcpt=bob@example.org",
            f"--message={message}",
            stdout=out,
        )
    assert exit_.value.code == 1
    report = out.getvalue()
    assert "(--skip-auth)" in report
    assert "550 5.7.1 From: header address not allowed for this login" in report


def test_command_runs_the_project_handlers(alice):
    seen = []

    @on("smtp_server_rcpt_to")
    def no_competitors(recipient, conn_meta):
        seen.append(conn_meta.get_meta("dry_run"))
        if recipient.domain == "competitor.example":
            reject(550, "5.7.1 not to them")

    out = io.StringIO()
    call_command(
        "smtppolicy",
        "--peer=192.0.2.7",
        f"--authc={ALICE}",
        "--skip-auth",
        f"--mail-from={ALICE}",
        "--rcpt=bob@example.org",
        "--rcpt=eve@competitor.example",
        stdout=out,
    )
    report = out.getvalue()
    assert "550 5.7.1 not to them" in report
    assert report.splitlines()[-1] == "would be accepted"  # bob is still a recipient
    assert seen == [True, True]


@pytest.fixture
def staff_client(client, db):
    user = User.objects.create_superuser("admin", "admin@example.com", "admin-pass-123")
    client.force_login(user)
    return client


def test_admin_form_against_the_builtins(staff_client, alice, secret_watch):
    url = reverse("admin:kumosubmit_smtplogin_policy_check")
    changelist = staff_client.get(reverse("admin:kumosubmit_smtplogin_changelist"))
    assert url in changelist.content.decode()
    page = staff_client.get(url)
    assert page.status_code == 200 and b"Would this pass?" in page.content
    form = {
        "peer": "192.0.2.9",
        "authc": ALICE,
        "password": PASSWORD,
        "mail_from": "ceo@example.net",
        "rcpts": "bob@example.org\n",
    }
    refused = staff_client.post(url, form).content.decode()
    assert "Would be refused" in refused
    assert "553 5.7.1 Sender address not allowed for this login" in refused
    assert PASSWORD not in refused
    accepted = staff_client.post(url, {**form, "mail_from": ALICE}).content.decode()
    assert "Would be accepted" in accepted and "(dry run: not stored)" in accepted
    nothing_written(alice)


def test_admin_form_against_a_project_handler(staff_client, alice):
    @on("smtp_server_mail_from")
    def weekday_only(sender, conn_meta):
        reject(451, "4.7.0 we only send on weekdays")

    url = reverse("admin:kumosubmit_smtplogin_policy_check")
    page = staff_client.post(
        url, {"peer": "192.0.2.9", "authc": ALICE, "mail_from": ALICE, "rcpts": "bob@example.org"}
    ).content.decode()
    assert "Would be refused" in page and "451 4.7.0 we only send on weekdays" in page


def test_admin_form_is_for_staff_with_the_permission(client, alice):
    url = reverse("admin:kumosubmit_smtplogin_policy_check")
    assert client.get(url).status_code == 302  # to the admin's sign-in
    user = User.objects.create_user("clerk", password="clerk-pass-123", is_staff=True)
    client.force_login(user)
    assert client.get(url).status_code == 403


def test_command_runs_auth_oauthbearer_with_a_token(alice, tmp_path, secret_watch):
    from kumosubmit.oauth.models import SmtpToken
    from kumosubmit.oauth.tokens import create_smtp_token

    alice.owner = User.objects.create_user("alice")
    alice.save(update_fields=["owner"])
    _row, token = create_smtp_token(alice, "dry", None)
    secret_watch.add(token)
    env = command_env(tmp_path)
    args = ["--peer", "192.0.2.7", "--authc", "-", "--token-stdin"]
    envelope = ["--mail-from", "news@alice.example", "--rcpt", "bob@example.org"]
    done = manage("smtppolicy", *args, *envelope, env=env, input=token + "\n")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[2].split()[0] == "smtp_server_auth_oauthbearer"
    assert "235 2.7.0" in lines[2]
    assert token not in done.stdout + done.stderr
    assert SmtpToken.objects.get().last_used_at is None  # nothing written
    refused = manage("smtppolicy", *args, *envelope, env=env, input="not-a-token\n")
    assert refused.returncode == 1
    assert "535 5.7.8" in refused.stdout.splitlines()[2]
    nothing_written(alice)
