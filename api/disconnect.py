"""Cancel on disconnect: a streamed create sent with `cancel_on_disconnect: true` is cancelled when its client
goes away and does not come back within `TURNSTREAM_DISCONNECT_GRACE_S`.

The node that saw the client leave writes a marker in Redis (keys.client_gone) and, after the grace, cancels
the turn if the marker is still there. A client that resumes with Last-Event-ID (or `starting_after`) on any
node deletes the marker first, and its tail takes the duty over: if it leaves in turn, the same happens. DEL
answers whether it deleted, so of a resuming tail and an expiring grace exactly one wins. Other tails never
cancel anything, nor does a background turn's client (its create returns at once). A node that dies during
a grace cancels nothing: the turn runs on, as any turn does.
"""

from __future__ import annotations

import asyncio
import logging
import time

from api.cancel import cancel
from api.deps import Services
from shared import keys, response_record

log = logging.getLogger(__name__)

# The marker outlives the grace by this much, so a node busy past the grace still finds it.
_MARKER_MARGIN_S = 60


class DisconnectCancels:
    """The grace timers of one API process."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._timers: set[asyncio.Task[None]] = set()

    def client_gone(self, response_id: str, _last_seq: int = -1) -> None:
        """The client of an opted-in stream left before the stream's end (called by api.sse)."""
        task = asyncio.get_running_loop().create_task(self._cancel_after_grace(response_id))
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def reattached(self, response_id: str) -> bool:
        """Called by a resuming tail: whether it took over a stream whose client left within the grace."""
        return bool(await self._svc.redis.delete(keys.client_gone(response_id)))

    async def stop(self) -> None:
        for task in list(self._timers):
            task.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)

    async def _cancel_after_grace(self, response_id: str) -> None:
        redis, grace_s = self._svc.redis, self._svc.settings.disconnect_grace_s
        marker = keys.client_gone(response_id)
        try:
            await redis.set(marker, int(time.time() * 1000), ex=int(grace_s) + _MARKER_MARGIN_S)
            await asyncio.sleep(grace_s)
            if not await redis.delete(marker):
                return  # a resuming client took it over
            record = await response_record.load(redis, response_id)
            if record is not None and not record.status.terminal:
                log.info("cancelling %s: its client left and did not resume within %gs", response_id, grace_s)
                await cancel(self._svc, record)
        except Exception:  # Redis away: the turn runs on, as it would without the option
            log.warning("cancel on disconnect of %s failed", response_id, exc_info=True)
