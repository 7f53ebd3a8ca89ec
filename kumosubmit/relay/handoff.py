"""Hand-off mode: ``runsmtpd`` relays in its own process, right after each message is stored.

A small site then needs one process. The listener stores a message and says
``250`` exactly as without hand-off; the spool's ``message_stored`` signal
(sent after the commit) wakes a :class:`RelayWorker` running in the same event
loop, which claims and delivers it like any worker would, with the same
leases, retries and DSNs. Its poll (``RELAY["POLL_INTERVAL"]``) is the sweep
that finds retries as they come due, and messages another process stored.
``runrelay`` processes may run beside it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kumosubmit.relay.config import RelayConfig, relay_settings
from kumosubmit.relay.worker import RelayWorker
from kumosubmit.signals import message_stored

log = logging.getLogger("kumosubmit.relay")


class Handoff:
    """Runs a relay worker in the current event loop, woken by each stored message.

    ``start()`` does nothing unless ``KUMOSUBMIT["RELAY"]["HANDOFF"]`` is true
    (or ``enabled=True`` is passed), so runsmtpd can always call it.
    """

    def __init__(self, config: RelayConfig | None = None, *, enabled: bool | None = None) -> None:
        self.config = config
        self.enabled = enabled
        self.worker: RelayWorker | None = None
        self._task: asyncio.Task[dict[str, int]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start relaying in this loop (if hand-off mode is on). Raises RelayConfigError."""
        enabled = self.enabled if self.enabled is not None else relay_settings()["HANDOFF"]
        if not enabled or self.running:
            return
        config = self.config or RelayConfig.from_settings()
        self._loop = asyncio.get_running_loop()
        self.worker = RelayWorker(config)
        message_stored.connect(self._stored, weak=False, dispatch_uid=id(self))
        self._task = asyncio.create_task(self.worker.run(), name="relay-handoff")
        log.info(
            "relay: hand-off mode, delivering to %s (%s, %d connections)",
            config.upstream,
            config.tls,
            config.workers,
        )

    def _stored(self, sender: Any, queue_id: str = "", **kwargs: Any) -> None:
        """Runs in the database thread after a commit: wake the worker in its loop."""
        loop, worker = self._loop, self.worker
        if loop is not None and worker is not None and not loop.is_closed():
            loop.call_soon_threadsafe(worker.wake)

    async def stop(self, grace: float = 30) -> None:
        """Finish the deliveries in progress (up to ``grace`` seconds), give back the rest."""
        message_stored.disconnect(dispatch_uid=id(self))
        if self.worker is None or self._task is None:
            return
        self.worker.stop(grace)
        try:
            stats = await asyncio.wait_for(asyncio.shield(self._task), grace + 10)
        except TimeoutError:
            self._task.cancel()
            log.warning("relay: hand-off worker did not stop in time")
        else:
            log.info("relay: hand-off stopped (%s)", _summary(stats))
        self._task = None


def _summary(stats: dict[str, int]) -> str:
    return ", ".join(f"{state} {count}" for state, count in sorted(stats.items())) or "no messages"
