"""An arq worker that wakes on enqueue instead of sleeping between polls.

arq polls its queue every `poll_delay` (0.5 s by default), which adds ~250 ms to every first token.
Here the API pushes a token to a wake list on every enqueue and an idle worker BLPOPs it, so pickup
takes a few milliseconds; the BLPOP timeout keeps the ordinary poll as a fallback (deferred jobs,
lost tokens, jobs re-queued after a dead worker's lease lapsed).
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq.worker import Worker

from shared import keys


class FastPickupWorker(Worker):
    def __init__(self, *args: Any, fallback_poll_s: float = 0.5, **kwargs: Any) -> None:
        # arq's own sleep between polls is replaced by the blocking wait below.
        super().__init__(*args, poll_delay=0, **kwargs)
        self.fallback_poll_s = fallback_poll_s

    async def _poll_iteration(self) -> None:
        await super()._poll_iteration()
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            # Only a worker with a free slot takes a token, so the token wakes one that can run the job.
            await self.pool.blpop([keys.QUEUE_WAKE], timeout=self.fallback_poll_s)  # type: ignore[arg-type]
        else:
            await asyncio.sleep(self.fallback_poll_s)
