"""A started API keeps its startup objects out of the garbage collector's full collections."""

from __future__ import annotations

import gc

from api.app import create_app
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings


async def test_a_started_api_has_frozen_its_startup_objects() -> None:
    # Nothing is unfrozen here: that would hand every frozen object of this test process back to the collector,
    # whose next full collection could then stall a timing test that runs after this one.
    for _ in range(2):  # the second app is started in a process that has frozen objects already
        app = create_app(Settings(), EmbeddedRedis())
        before = gc.get_freeze_count()
        async with app.router.lifespan_context(app):
            frozen = gc.get_freeze_count() - before
        assert frozen > 100, frozen  # what starting it made (~500 objects here; ~80,000 in a fresh process)
