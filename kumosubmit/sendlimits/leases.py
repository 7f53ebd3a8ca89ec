"""Units a connection reserves ahead, so that a busy session does not ask the store for each one.

A reservation asks the backend (the database or Redis) for a bucket's units; for a
connection that sends many messages, that one trip per message is most of what the
limits cost. So when a connection has to ask, it takes a little more than it needs,
and its next reservations use what is left, with no trip:

- The first trip for a bucket takes what is needed; each further trip takes twice as
  much as the one before, up to the bucket's *lease*: ``SEND_LIMITS_LEASE`` (a share,
  5 % by default) of the rule's count, rounded down. A session that sends one message
  asks for exactly one; one that sends hundreds makes a trip every few messages. A
  trip tops up every bucket of the reservation at once (a message counts against
  several rules), so trips follow the smallest lease.
- Where every rule has a lease, the AUTH reserves the first message
  (policy/sendlimits.py's ``reserve_first``), held as a first trip's.
- A rule whose lease is 1 or less (under 40 per period, at 5 %) is never reserved
  ahead: every message is its own trip, and its units are given back at once when its
  transaction is not stored, exactly as without leases.
- What a transaction gives back (it was not stored, or a recipient unit was not used)
  returns to the connection's lease, up to the lease; the rest to the store.
- When the connection ends, everything it still holds goes back to the store.

The limit is never exceeded: a unit held ahead is a unit taken from the shared bucket.
What it costs is that units held by an open connection count as used for every other
connection of the same login, and on the pages, until it uses or returns them: at most
one lease per rule per open connection. A reservation the store refuses is asked again
for exactly what is needed, so a lease never makes a message be refused that would have
passed without it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kumosubmit.conf import app_settings
from kumosubmit.sendlimits.backends import Bucket, Items, Refusal


def lease_of(bucket: Bucket) -> int:
    """How many units of ``bucket`` a connection may hold ahead (1: none)."""
    share = app_settings.SEND_LIMITS_LEASE or 0
    return max(1, int(bucket.rule.count * share))


Ask = Callable[[Items], Awaitable[Refusal | None]]


@dataclass
class Lease:
    """What one connection holds of each bucket: units reserved and not yet used."""

    units: dict[Bucket, int] = field(default_factory=dict)
    #: The size of the next trip for a bucket (doubles with each trip, up to its lease).
    next_take: dict[Bucket, int] = field(default_factory=dict)

    def hold(self, items: Items) -> None:
        """Keep ``items``, reserved for the connection elsewhere (with its AUTH), as the
        first trip's: the next trip for each takes twice as much."""
        for bucket, cost in items:
            self.units[bucket] = self.units.get(bucket, 0) + cost
            self.next_take[bucket] = min(2 * cost, lease_of(bucket))

    def take(self, items: Items) -> bool:
        """Take ``items`` from what is held if it covers them all (no trip); else nothing."""
        units = self.units
        if any(units.get(bucket, 0) < cost for bucket, cost in items):
            return False
        for bucket, cost in items:
            units[bucket] -= cost
        return True

    async def reserve(self, items: Items, ask: Ask) -> Refusal | None:
        """Take ``items`` from what is held, asking the store (``ask``) for what is short:
        all or nothing, as a backend's reservation."""
        exact = [
            (bucket, cost - self.units.get(bucket, 0))
            for bucket, cost in items
            if self.units.get(bucket, 0) < cost
        ]
        if exact:
            # A trip tops up every bucket of the reservation, not only those short of it:
            # the next trip is due when the smallest lease runs out, not at each one's.
            ahead = []
            for bucket, cost in items:
                have = self.units.get(bucket, 0)
                target = max(cost, min(self.next_take.get(bucket, 1), lease_of(bucket)))
                if target > have:
                    ahead.append((bucket, target - have))
                    self.next_take[bucket] = min(2 * target, lease_of(bucket))
            refusal = await ask(ahead)
            if refusal is not None and ahead != exact:
                ahead = exact  # near the limit: exactly what this reservation needs
                refusal = await ask(ahead)
            if refusal is not None:
                return refusal
            for bucket, taken in ahead:
                self.units[bucket] = self.units.get(bucket, 0) + taken
        for bucket, cost in items:
            self.units[bucket] -= cost
        return None

    def give_back(self, items: Items) -> list[tuple[Bucket, int]]:
        """Keep what a settled transaction did not use, up to each lease; return what is
        to go back to the store."""
        back: list[tuple[Bucket, int]] = []
        for bucket, cost in items:
            held = self.units.get(bucket, 0)
            lease = lease_of(bucket)
            keep = min(cost, max(0, lease - held)) if lease > 1 else 0
            if keep:
                self.units[bucket] = held + keep
            if cost > keep:
                back.append((bucket, cost - keep))
        return back

    def surrender(self) -> list[tuple[Bucket, int]]:
        """Everything held, to go back to the store (the connection ends)."""
        back = [(bucket, units) for bucket, units in self.units.items() if units > 0]
        self.units.clear()
        return back
