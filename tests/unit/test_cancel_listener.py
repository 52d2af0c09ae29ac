"""A cancel whose signal never arrived (a subscriber's node died with the broadcast) is still seen: the flag
is read back for every turn running here, once a second."""

from __future__ import annotations

import asyncio

import pytest

from shared import keys
from shared.redis_conn import EmbeddedRedis
from shared.response_record import Field
from shared.settings import Settings
from worker.cancel_listener import CancelListener
from worker.redis_retry import Outage


async def test_a_cancel_flag_set_without_its_signal_reaches_the_running_turn_within_a_second() -> None:
    redis = EmbeddedRedis().client(Settings())
    listener = CancelListener(redis, Outage(1.0))
    await listener.start()
    try:
        handle = listener.register("resp_running")
        handle.task = asyncio.create_task(asyncio.sleep(30))  # the turn, as a running job's task
        other = listener.register("resp_other")
        await redis.hset(keys.response("resp_running"), Field.CANCEL, "1")  # and no PUBLISH

        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(2.5):  # a TimeoutError here: the flag was not seen
                await handle.task

        assert handle.requested and not other.requested
    finally:
        await listener.stop()
