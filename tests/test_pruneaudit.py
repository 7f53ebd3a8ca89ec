"""pruneaudit: old audit rows and spent failure counters go; everything still in use stays."""

from __future__ import annotations

import itertools
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from kumosubmit.audit import retention
from kumosubmit.audit.models import AuthOutcome, ConnectionRecord
from kumosubmit.credentials.models import AuthFailureCounter
from kumosubmit.credentials.throttle import policy
from tests.live import plain_blob, quitting

pytestmark = pytest.mark.django_db(transaction=True)

_ids = itertools.count()
DAY = 86400


def record(age_days: float) -> ConnectionRecord:
    started = timezone.now() - timedelta(days=age_days)
    return ConnectionRecord.objects.create(
        conn_id=f"old{next(_ids)}",
        started_at=started,
        ended_at=started + timedelta(seconds=2),
        listener="starttls",
        peer_address="192.0.2.10",
        auth_outcome=AuthOutcome.FAILURE,
    )


def counter(value: str, **fields) -> AuthFailureCounter:
    return AuthFailureCounter.objects.create(kind="address", value=value, **fields)


def prune(*args: str) -> str:
    out = StringIO()
    call_command("pruneaudit", *args, stdout=out)
    return out.getvalue()


def test_old_audit_rows_go_and_a_live_connections_row_stays(smtp_server, make_login):
    make_login("alice@example.com", "pw for alice")
    with quitting(smtp_server.starttls()) as client:
        blob = plain_blob("", "alice@example.com", "pw for alice")
        assert client.docmd("AUTH", "PLAIN " + blob)[0] == 235
    smtp_server.settle()  # the session's audit row is written
    live = set(ConnectionRecord.objects.values_list("conn_id", flat=True))
    assert len(live) == 1
    old = [record(91), record(400)]
    kept = record(89)

    assert "Would delete 2 audit row(s)." in prune("--dry-run")
    assert ConnectionRecord.objects.count() == 4
    assert "Deleted 2 audit row(s)." in prune()  # AUDIT_RETENTION: 90 days
    remaining = set(ConnectionRecord.objects.values_list("conn_id", flat=True))
    assert remaining == live | {kept.conn_id}
    assert not {r.conn_id for r in old} & remaining


def test_age_option_setting_and_none(settings):
    record(2), record(5), record(10)
    assert "Deleted 1 audit row(s)." in prune("--age", str(7 * DAY))
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "AUDIT_RETENTION": 3 * DAY}
    assert "Deleted 1 audit row(s)." in prune()
    settings.KUMOSUBMIT = {**settings.KUMOSUBMIT, "AUDIT_RETENTION": None}
    assert "the audit log is kept" in prune()
    assert ConnectionRecord.objects.count() == 1
    assert "Deleted 1 audit row(s)." in prune("--age", "0")
    with pytest.raises(CommandError):
        prune("--age", "-1")


def test_deletes_in_batches(monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 3)
    for _ in range(8):
        record(100)
    record(1)
    assert "Deleted 8 audit row(s)." in prune()
    assert ConnectionRecord.objects.count() == 1


def test_only_spent_failure_counters_go():
    now = timezone.now()
    window = policy().window
    spent = [
        counter("198.51.100.1", failures=3, last_failure_at=now - window - timedelta(seconds=5)),
        counter("198.51.100.2", failures=0),
        counter(  # a block that is over
            "198.51.100.3",
            failures=9,
            last_failure_at=now - timedelta(seconds=30),
            blocked_until=now - timedelta(seconds=1),
        ),
    ]
    in_use = [
        counter("198.51.100.4", failures=2, last_failure_at=now - timedelta(seconds=30)),
        counter(  # a block in force outlives its window
            "198.51.100.5",
            failures=9,
            last_failure_at=now - window - timedelta(hours=1),
            blocked_until=now + timedelta(minutes=5),
        ),
    ]
    assert "Would delete 3 spent failure counter(s)." in prune("--dry-run")
    assert AuthFailureCounter.objects.count() == 5
    assert "Deleted 3 spent failure counter(s)." in prune()
    assert set(AuthFailureCounter.objects.values_list("value", flat=True)) == {
        c.value for c in in_use
    }
    assert not AuthFailureCounter.objects.filter(value__in=[c.value for c in spent]).exists()
