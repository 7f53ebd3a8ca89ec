"""Django's own SMTP email backend, the first client a Django project points at this server.

A real ``runsmtpd`` process on the defaults (only its port and certificate given) and
Django's ``EmailBackend`` over STARTTLS with AUTH, as a project configures it.
"""

from __future__ import annotations

import signal

from django.core.mail import get_connection, send_mass_mail

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.spool.models import Message
from tests.live import free_port
from tests.process import ManageProcess, command_env

ALICE = "alice@example.com"
PASSWORD = "correct horse battery"


def test_send_mass_mail_of_150_over_one_connection_is_all_accepted(
    tmp_path, pki, make_login, monkeypatch
):
    make_login(ALICE, PASSWORD)
    port = free_port()
    server = ManageProcess(
        "runsmtpd",
        "--listen",
        f"127.0.0.1:{port}",
        *pki.cert_args(),
        "--workers",
        "1",
        env=command_env(tmp_path / "data"),
    )
    try:
        server.wait_for("listening on")
        # The backend verifies with ssl.create_default_context(), which reads SSL_CERT_FILE.
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))
        connection = get_connection(
            "django.core.mail.backends.smtp.EmailBackend",
            host="127.0.0.1",
            port=port,
            username=ALICE,
            password=PASSWORD,
            use_tls=True,
            timeout=30,
        )
        datatuple = [
            (f"message {n}", f"body {n}", ALICE, [f"r{n}@example.org"]) for n in range(150)
        ]
        assert send_mass_mail(datatuple, connection=connection) == 150
        server.signal(signal.SIGTERM)
        assert server.finish() == 0, server.output
    finally:
        server.kill()
    assert Message.objects.count() == 150
    assert sorted(m.rcpt_tos[0] for m in Message.objects.all()) == sorted(
        f"r{n}@example.org" for n in range(150)
    )
    # One connection carried them all.
    record = ConnectionRecord.objects.get()
    assert record.messages_accepted == 150
    assert record.auth_outcome == "success"
