"""Every query on the hot path has an index (EXPLAIN on PostgreSQL, issue 5)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.utils import timezone

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials import senders, service, throttle
from kumosubmit.credentials.models import AppPassword
from kumosubmit.relay.retention import expired_content
from kumosubmit.spool.models import Message

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN plans are PostgreSQL's"),
]

HOT_PATH = {
    # The built-in AUTH handler: the login (the SQL it runs), then one app password by its id.
    "login by name": lambda: service.active_login("alice@example.com"),
    "app password by id": lambda: AppPassword.objects.filter(login_id=1, public_id="abcdefgh"),
    # The brute-force check before every AUTH: three keys at once.
    "failure counters": lambda: throttle.Keys("192.0.2.1", "alice@example.com").queryset(),
    # The sender policy, after a good AUTH.
    "allowed senders": lambda: senders.allowed_senders("alice@example.com"),
    # The relay's claim of due messages, oldest first.
    "due messages": lambda: Message.objects.filter(next_attempt_at__lte=timezone.now()).order_by(
        "next_attempt_at", "pk"
    ),
    # Retention: delivered messages whose content is due to go.
    "expired content": lambda: expired_content(86400),
    # What the pages and the admin look up in the audit log.
    "audit by login": lambda: ConnectionRecord.objects.filter(authc="alice@example.com"),
    "audit by address": lambda: ConnectionRecord.objects.filter(peer_address="192.0.2.1"),
}


@pytest.mark.parametrize("name", sorted(HOT_PATH))
def test_hot_path_query_uses_an_index(name):
    with connection.cursor() as cursor:
        # Tables are tiny here; forbid sequential scans so the plan shows what an index allows.
        cursor.execute("SET enable_seqscan = off")
    try:
        query = HOT_PATH[name]()
        # No default ordering: an index used only to sort would hide a missing one.
        plan = (query if query.query.order_by else query.order_by()).explain()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET enable_seqscan")
    # The filter itself is answered from an index (a plain "Filter:" would be a scan).
    assert "Index Cond" in plan or "Recheck Cond" in plan, plan
    assert "Seq Scan" not in plan, plan
