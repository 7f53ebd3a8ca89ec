"""A sending-limits backend for measuring only: it grants everything, after the same trip to
the database thread a reservation makes (``run_db``) but with no SQL. Beside the database
backend, it tells how much of the limits' cost is that trip rather than the store
(docs/benchmarks.md):

    bench/submission.py --only messages --no-postfix \\
        --compare 'hop only={"SEND_LIMITS_BACKEND": "bench.limits_hop_only.HopOnly"}'
"""

from __future__ import annotations

from collections.abc import Sequence

from kumosubmit.db import run_db
from kumosubmit.sendlimits.backends import Bucket, Items, Refusal, SendLimitBackend


class HopOnly(SendLimitBackend):
    def reserve(self, items: Items, now: int) -> Refusal | None:
        return None

    def release(self, items: Items, now: int) -> None:
        return None

    def tats(self, buckets: Sequence[Bucket]) -> dict[Bucket, int]:
        return {}

    def claim_notice(self, bucket: Bucket, now: int) -> bool:
        return False

    async def areserve(self, items: Items) -> Refusal | None:
        return await run_db(self.reserve, items, 0)
