"""DATA_MEMORY_BUDGET: how much message data one worker holds in memory at once."""

from __future__ import annotations

from kumosubmit.conf import app_settings


class MemoryBudget:
    """Bytes of message data in flight in this process, against ``DATA_MEMORY_BUDGET``.

    Every session that receives a message reserves what it holds (the SIZE
    the client declared, or the bytes as they arrive) and releases it once the
    message is stored or refused. The event loop is single-threaded, so the
    bookkeeping needs no lock. The limit is read at each reservation, so a
    changed setting applies to the next one.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.in_use = 0
        self._limit = limit

    @property
    def limit(self) -> int:
        """A fixed limit if one was given, else the setting."""
        return int(app_settings.DATA_MEMORY_BUDGET if self._limit is None else self._limit)

    def available(self) -> int:
        return max(0, self.limit - self.in_use)

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes if they are free; False (and nothing taken) if not."""
        if size > self.available():
            return False
        self.in_use += size
        return True

    def release(self, size: int) -> None:
        self.in_use -= size
        assert self.in_use >= 0, "released more than was reserved"


class Reservation:
    """One message's share of a :class:`MemoryBudget`; grows with the data, released once."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow_to(self, size: int) -> bool:
        """Hold at least ``size`` bytes in all; False if the budget cannot give the rest."""
        more = size - self.size
        if more <= 0:
            return True
        if not self.budget.reserve(more):
            return False
        self.size = size
        return True

    def release(self) -> None:
        self.budget.release(self.size)
        self.size = 0
