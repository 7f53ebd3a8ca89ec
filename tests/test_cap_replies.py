"""bench/cap_replies.py: what Django's backend, smtplib and aiosmtplib do at a capped MAIL.

Real clients against a real (plain aiosmtpd) server on loopback; this checks the
table docs/security.md records ("Messages per connection") and why the cap is off
by default and answered 421 when an operator sets one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.live import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_what_clients_do_with_each_candidate_reply():
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "cap_replies.py"), "--json"),
            *("--cap", "3", "--messages", "5", "--port", str(free_port())),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    rows = {(row["reply"][:3], row["client"]): row for row in json.loads(done.stdout)}
    for code in ("421", "451", "452", "450"):
        # Whatever the reply, the three accepted messages are stored, and Django's
        # send_messages() raises at the fourth, so its caller cannot tell that three went.
        assert {row["stored"] for (c, _), row in rows.items() if c == code} == {3}
        assert rows[code, "django send_messages"]["caller_saw"] == (
            f"raised SMTPSenderRefused({code})"
        )
        assert rows[code, "django send_messages fail_silently"]["caller_saw"] == "returned 3"
    for client in ("smtplib sendmail loop", "aiosmtplib sendmail loop"):
        # After 421 the clients know the connection is gone, so a client that reconnects
        # on that goes on with a fresh count; after a 45x they are refused again and again
        # on the same connection.
        assert rows["421", client]["caller_saw"] == (
            "ok, ok, ok, SMTPSenderRefused(421), SMTPServerDisconnected"
        )
        for code in ("451", "452", "450"):
            assert rows[code, client]["caller_saw"] == (
                f"ok, ok, ok, SMTPSenderRefused({code}), SMTPSenderRefused({code})"
            )
