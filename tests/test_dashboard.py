"""The operator's view renders from a seeded audit table, with the right figures.

Its speed over a million rows is a benchmark (bench/dashboard.py, docs/benchmarks.md),
not a timed test.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone

from kumosubmit.admin import dashboard
from kumosubmit.admin.charts import Column, Series, bar_chart
from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.models import AuthFailureCounter

URL = "/admin/kumosubmit/connectionrecord/dashboard/"
NOW = datetime(2026, 12, 6, 15, 30, tzinfo=UTC)


def record(at: datetime, outcome: str, address: str = "192.0.2.1", authc: str = "", **more):
    n = ConnectionRecord.objects.count()
    return ConnectionRecord.objects.create(
        conn_id=f"c{n}",
        started_at=at,
        ended_at=at,
        listener="starttls",
        peer_address=address,
        authc=authc,
        auth_outcome=outcome,
        **more,
    )


@pytest.fixture
def seeded(db):
    # This hour: 3 successes with 5 messages, 2 failures from one address, 1 blocked.
    for _ in range(3):
        record(NOW - timedelta(minutes=5), "success", authc="alice", messages_accepted=5)
    for _ in range(2):
        record(NOW - timedelta(minutes=10), "failure", "203.0.113.9", "bob")
    record(NOW - timedelta(minutes=1), "blocked", "203.0.113.9", "bob")
    # Two hours ago: a failure from another address; 3 days ago: one success; 8 days: out.
    record(NOW - timedelta(hours=2), "failure", "198.51.100.4", "carol")
    record(NOW - timedelta(days=3), "success", authc="alice", messages_accepted=1)
    record(NOW - timedelta(days=8), "failure", "198.51.100.99", "old")
    record(NOW + timedelta(hours=2), "success")  # the future (a skewed clock): out


def test_hours_are_counted_by_the_database(seeded):
    week = dashboard.hourly(NOW)
    assert len(week) == 168
    assert week[-1].start == datetime(2026, 12, 6, 15, tzinfo=UTC)
    assert week[-1].outcomes == {"success": 3, "failure": 2, "blocked": 1}
    assert week[-1].messages == 15
    assert week[-3].outcomes == {"failure": 1}
    assert sum(h.outcomes.get("success", 0) for h in week) == 4
    assert sum(h.messages for h in week) == 16


def test_top_failing_addresses_and_logins(seeded):
    addresses = dashboard.top_failing(NOW, "peer_address")
    assert [(r["value"], r["connections"]) for r in addresses] == [
        ("203.0.113.9", 3),
        ("198.51.100.4", 1),
    ]
    logins = dashboard.top_failing(NOW, "authc")
    assert [(r["value"], r["connections"]) for r in logins] == [("bob", 3), ("carol", 1)]


def test_the_page_renders_charts_and_blocks_for_staff(db):
    now = timezone.now()
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    for _ in range(3):
        record(hour, "success", authc="alice", messages_accepted=5)
    for _ in range(2):
        record(hour, "failure", "203.0.113.9", "bob")
    record(hour, "blocked", "203.0.113.9", "bob")
    AuthFailureCounter.objects.create(
        kind="web_address", value="127.0.0.2", failures=10, blocked_until=now + timedelta(minutes=9)
    )
    AuthFailureCounter.objects.create(
        kind="address", value="203.0.113.9", failures=10, blocked_until=now + timedelta(minutes=5)
    )
    AuthFailureCounter.objects.create(
        kind="login", value="over", failures=30, blocked_until=now - timedelta(minutes=1)
    )
    admin = User.objects.create_superuser("root", "root@example.org", "x" * 20)
    client = Client()
    client.force_login(admin)
    response = client.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count('class="chart"') == 4
    label = timezone.localtime(hour).strftime("%Y-%m-%d %H:00")
    # In the 24-hour chart and in the 7-day one.
    assert page.count(f"{label}: success 3, failure 2, blocked 1, error 0") == 2
    assert page.count(f"{label}: messages accepted 15") == 2
    assert re.search(r"<td><a [^>]*>203\.0\.113\.9</a></td><td>3</td>", page)
    blocks = page[page.index('id="blocks"') :]
    assert "2 blocks in force, web and SMTP" in page
    assert "web: client address" in blocks and "127.0.0.2" in blocks
    assert "client address" in blocks and "203.0.113.9" in blocks and "over" not in blocks
    # Linked from the audit log.
    assert URL in client.get("/admin/kumosubmit/connectionrecord/").content.decode()


def test_the_page_is_for_those_who_may_view_the_audit_log(db):
    staff = User.objects.create_user("clerk", "c@example.org", "x" * 20, is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(URL).status_code == 403
    assert Client().get(URL).status_code == 302  # to the admin's sign-in


@pytest.mark.parametrize("field", ["hours", "peer_address", "authc"])
def test_the_audit_queries_read_only_the_dashboard_index(db, field):
    if field == "hours":
        query = dashboard.hourly_query(NOW - timedelta(days=7), NOW)
    else:
        query = dashboard.top_failing_query(NOW, field)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Tables are tiny here; forbid sequential scans so the plan shows the index.
            cursor.execute("SET enable_seqscan = off")
        try:
            assert "Index Only Scan using kumosubmit_audit_dashboard" in query.explain()
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET enable_seqscan = on")
    else:
        # Not the index of the grouped column walked end to end to skip a sort, nor the
        # auth_outcome one (failures of all time), with or without ANALYZE's statistics.
        assert "USING COVERING INDEX kumosubmit_audit_dashboard" in query.explain()
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        assert "USING COVERING INDEX kumosubmit_audit_dashboard" in query.explain()


def test_charts_escape_what_they_are_given():
    svg = bar_chart([Column("<b>", "a & b", {"x": 3})], [Series("x", "<i>", "red")], title='"t"')
    assert "<b>" not in svg and "<i>" not in svg and "&lt;b&gt;" in svg
    assert 'aria-label="&quot;t&quot;"' in svg
