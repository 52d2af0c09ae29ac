"""Accepting a turn renders everything first: a request that cannot be stored fails before any write."""

from __future__ import annotations

import json
from typing import Any

import pytest
from arq.connections import ArqRedis

from api.deps import Services
from api.errors import APIError
from api.turns import accept
from shared import ids, keys
from shared.models import TurnRequest
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings
from shared.turn_state import Retention, TurnState

SETTINGS = Settings()


@pytest.fixture
def redis() -> ArqRedis:
    return EmbeddedRedis().client(SETTINGS)


def services(redis: ArqRedis) -> Services:
    # accept never streams, so it needs no fan-out.
    return Services(settings=SETTINGS, redis=redis, state=TurnState(redis, Retention.from_settings(SETTINGS)),
                    fanout=None)  # type: ignore[arg-type]


def request(**fields: Any) -> TurnRequest:
    message = {"id": ids.message_id(), "type": "message", "role": "user", "status": "completed",
               "content": [{"type": "input_text", "text": "hi"}]}
    return TurnRequest(response_id=ids.response_id(), model="m", input=[message], **fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [{"type": "function", "name": "f", "parameters": {"maximum": float("nan")}}]},
        {"tools": [{"type": "function", "name": "f", "parameters": {"maximum": float("inf")}}]},
        {"instructions": "\ud800"},
    ],
    ids=["nan", "infinity", "lone surrogate"],
)
async def test_a_turn_that_cannot_be_rendered_is_refused_before_anything_is_stored(
    redis: ArqRedis, fields: dict[str, Any]
) -> None:
    with pytest.raises(APIError) as raised:
        await accept(services(redis), request(**fields))

    assert raised.value.status == 400
    assert await redis.keys("*") == []


async def test_an_accepted_turn_returns_exactly_the_response_it_stored(redis: ArqRedis) -> None:
    req = request(metadata={"k": "ünïcode"})

    returned = await accept(services(redis), req)

    stored = await redis.hget(keys.response(req.response_id), "response")
    assert json.loads(returned) == json.loads(stored)
    assert json.loads(returned)["status"] == "queued"
