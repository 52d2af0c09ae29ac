"""A started API keeps its startup objects out of the garbage collector's full collections."""

from __future__ import annotations

import gc

from api.app import create_app
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings


async def test_a_started_api_has_frozen_its_startup_objects() -> None:
    gc.unfreeze()
    app = create_app(Settings(), EmbeddedRedis())
    try:
        assert gc.get_freeze_count() == 0
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 10_000  # modules, models and routes, not a handful of objects
    finally:
        gc.unfreeze()
