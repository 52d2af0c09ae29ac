"""The API's cache of the agent cards the workers publish."""

from __future__ import annotations

import asyncio
import json

import pytest
from arq.connections import ArqRedis

from api.agent_directory import AgentDirectory
from shared import keys
from shared.models import AgentCard
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings


@pytest.fixture
def redis() -> ArqRedis:
    return EmbeddedRedis().client(Settings())


async def publish(redis: ArqRedis, *cards: AgentCard) -> None:
    await redis.delete(keys.AGENTS)
    await redis.hset(keys.AGENTS, mapping={c.name: json.dumps(c.model_dump()) for c in cards})


class CountingRedis:
    """Counts the reads the directory makes."""

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis
        self.reads = 0

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        self.reads += 1
        return await self.redis.hgetall(key)  # type: ignore[no-any-return]


async def test_a_newly_published_agent_is_served_from_its_first_request(redis: ArqRedis) -> None:
    directory = AgentDirectory(redis, passthrough=False)
    await publish(redis, AgentCard(name="a", model="m"))
    assert await directory.card("b") is None

    await publish(redis, AgentCard(name="a", model="m"), AgentCard(name="b", model="m"))

    card = await directory.card("b")
    assert card is not None and card.name == "b"


async def test_a_known_card_costs_no_read_until_it_is_stale(redis: ArqRedis) -> None:
    counting = CountingRedis(redis)
    directory = AgentDirectory(counting, passthrough=False, max_age_s=0.2)  # type: ignore[arg-type]
    await publish(redis, AgentCard(name="a", model="m1"))
    assert (await directory.card("a")) == AgentCard(name="a", model="m1")
    await publish(redis, AgentCard(name="a", model="m2"))  # a worker republished a changed card

    for _ in range(5):
        assert (await directory.card("a")) == AgentCard(name="a", model="m1")
    assert counting.reads == 1

    await asyncio.sleep(0.25)
    assert (await directory.card("a")) == AgentCard(name="a", model="m2")
    assert counting.reads == 2


async def test_passthrough_does_not_reload_for_every_unknown_model(redis: ArqRedis) -> None:
    counting = CountingRedis(redis)
    directory = AgentDirectory(counting, passthrough=True)  # type: ignore[arg-type]
    await publish(redis, AgentCard(name="a", model="m"))

    for name in ("gpt-x", "gpt-y", "gpt-z"):
        assert await directory.card(name) is None

    assert counting.reads == 1


async def test_requests_that_find_the_cache_stale_together_share_one_read(redis: ArqRedis) -> None:
    counting = CountingRedis(redis)
    directory = AgentDirectory(counting, passthrough=False)  # type: ignore[arg-type]
    await publish(redis, AgentCard(name="a", model="m"))

    cards = await asyncio.gather(*(directory.card("a") for _ in range(50)))

    assert cards == [AgentCard(name="a", model="m")] * 50
    assert counting.reads == 1


async def test_a_caller_cancelled_during_a_shared_reload_does_not_cancel_it_for_the_others(redis: ArqRedis) -> None:
    directory = AgentDirectory(redis, passthrough=False)
    await publish(redis, AgentCard(name="a", model="m"))
    leaving = asyncio.create_task(directory.card("a"))
    staying = asyncio.create_task(directory.card("a"))
    await asyncio.sleep(0)  # both are waiting on the one reload
    leaving.cancel()

    assert await staying == AgentCard(name="a", model="m")
    assert leaving.cancelled()
