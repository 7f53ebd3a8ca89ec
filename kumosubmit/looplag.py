"""How long the event loop is held: the one number that shows a blocking call.

A task asks to be woken every ``interval`` seconds and measures how late it is.
Anything that holds the loop (a sync ORM call, an argon2 verify, a big copy) shows
up as lag for every session at once. Lags over ``warn_after`` are logged at once;
the worst recent figures are kept for metrics and for the logs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import statistics

from kumosubmit import metrics

log = logging.getLogger("kumosubmit.looplag")


class LoopLagMonitor:
    def __init__(self, interval: float = 0.05, warn_after: float = 0.1, keep: int = 1200) -> None:
        self.interval = interval
        self.warn_after = warn_after
        self.samples: collections.deque[float] = collections.deque(maxlen=keep)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - expected)
            self.samples.append(lag)
            metrics.loop_lag(lag)
            if lag >= self.warn_after:
                log.warning("event loop held for %.0f ms", lag * 1000)

    @property
    def worst(self) -> float:
        """The longest lag among the recent samples, in seconds."""
        return max(self.samples, default=0.0)

    @property
    def p99(self) -> float:
        """The 99th percentile of the recent samples, in seconds."""
        if len(self.samples) < 2:
            return self.worst
        # "inclusive": within the samples seen (the default extrapolates past the worst).
        return statistics.quantiles(self.samples, n=100, method="inclusive")[98]
