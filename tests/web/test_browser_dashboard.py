"""The operator's view in Chromium, over a week of seeded audit rows (its screenshot is the
one docs/web.md shows)."""

from __future__ import annotations

import random
from datetime import timedelta

from django.contrib.auth.models import User
from django.utils import timezone

from kumosubmit.audit.models import ConnectionRecord
from kumosubmit.credentials.models import AuthFailureCounter
from tests.web.conftest import SITE_PASSWORD
from tests.web.test_browser import shoot


def seed_week() -> None:
    rng = random.Random(7)
    now = timezone.now()
    rows = []
    for n in range(3000):
        at = now - timedelta(seconds=rng.uniform(0, 7 * 86400) ** 1.02 % (7 * 86400))
        roll = rng.random()
        outcome = "success" if roll < 0.8 else "failure" if roll < 0.95 else "blocked"
        failing = outcome != "success"
        rows.append(
            ConnectionRecord(
                conn_id=f"s{n}",
                started_at=at,
                ended_at=at,
                listener="starttls",
                peer_address=f"203.0.113.{rng.randrange(1, 6)}" if failing else "192.0.2.8",
                authc=f"user{rng.randrange(1, 5) if failing else rng.randrange(50)}@example.com",
                auth_outcome=outcome,
                messages_accepted=0 if failing else rng.choice((0, 1, 2)),
            )
        )
    ConnectionRecord.objects.bulk_create(rows)
    until = now + timedelta(minutes=12)
    AuthFailureCounter.objects.create(
        kind="address", value="203.0.113.4", failures=10, blocked_until=until
    )
    AuthFailureCounter.objects.create(
        kind="web_address", value="198.51.100.23", failures=10, blocked_until=until
    )


def test_the_operators_view_in_a_browser(live_server, new_browser, transactional_db):
    seed_week()
    User.objects.create_superuser("root", "root@example.org", SITE_PASSWORD)
    page = new_browser(viewport={"width": 1600, "height": 900}).new_page()
    base = live_server.url
    page.goto(f"{base}/admin/kumosubmit/connectionrecord/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(SITE_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Operator's view").click()
    page.wait_for_url(f"{base}/admin/kumosubmit/connectionrecord/dashboard/")
    assert page.locator("svg.chart").count() == 4
    assert page.locator("svg.chart rect[fill='#c62828']").count() > 24  # failures drawn
    assert "203.0.113." in page.locator("#top-addresses").inner_text()
    blocks = page.locator("#blocks").inner_text()
    assert "198.51.100.23" in blocks and "203.0.113.4" in blocks
    shoot(page, "dashboard")
