"""The key store and the limit scripts on the embedded Redis: quick checks of their rules."""

from __future__ import annotations

import json

import pytest
from arq.connections import ArqRedis

from api.auth import _bearer, duration
from shared import ids, keys
from shared.api_keys import KeyStore, SeedKey, digest
from shared.models import Status, TurnOutcome, TurnRequest, Usage
from shared.rate_limits import Limiter
from shared.redis_conn import EmbeddedRedis
from shared.response_object import build_response
from shared.settings import Settings
from shared.turn_state import Retention, TurnState

SETTINGS = Settings(default_key_rpm=600, default_key_max_concurrent=20)


@pytest.fixture
def redis() -> ArqRedis:
    return EmbeddedRedis().client(SETTINGS)


async def test_the_window_allows_exactly_rpm_requests(redis: ArqRedis) -> None:
    key, secret = await KeyStore(redis, SETTINGS).create("p", rpm=3)
    limiter = Limiter(redis)
    seen = [await limiter.authorize(digest(secret)) for _ in range(4)]
    assert [a.allowed for a in seen if a] == [True, True, True, False]
    assert [a.budget.remaining for a in seen if a] == [2, 1, 0, 0]
    refused = seen[-1]
    assert refused is not None and 0 < refused.budget.retry_after_ms <= 60_000
    assert refused.project == "p" and refused.key_id == key.id


async def test_an_unknown_or_revoked_secret_is_not_authorized(redis: ArqRedis) -> None:
    store = KeyStore(redis, SETTINGS)
    _, secret = await store.create("p")
    limiter = Limiter(redis)
    assert await limiter.authorize(digest("sk-ts-unknown")) is None
    assert await limiter.authorize(digest(secret)) is not None
    await store.revoke(secret)
    assert await limiter.authorize(digest(secret)) is None
    assert await store.list_keys() == []


async def test_a_finished_turn_frees_its_slot_and_counts_its_tokens_once(redis: ArqRedis) -> None:
    key, _ = await KeyStore(redis, SETTINGS).create("p", max_concurrent=1)
    req = TurnRequest(response_id=ids.response_id(), model="m", input=[], project="p", key_id=key.id)
    await redis.hset(keys.response(req.response_id), mapping={"status": "in_progress", "attempt": 1,
                                                              "project": "p"})
    await redis.zadd(keys.api_key_inflight(key.id), {req.response_id: 0})  # the slot its accept took
    state = TurnState(redis, Retention(600, 600, 600, 1000))
    outcome = TurnOutcome(status=Status.COMPLETED, usage=Usage(input_tokens=7, output_tokens=5))
    for _ in range(2):  # the second commit (a re-run's) is refused and counts nothing
        await state.finish(req.response_id, expect=Status.IN_PROGRESS, attempt=1, final=Status.COMPLETED,
                           response=build_response(req, Status.COMPLETED, outcome), conversation_id=None, items=[],
                           project="p", key_id=key.id)
    assert await redis.zcard(keys.api_key_inflight(key.id)) == 0
    [today] = await KeyStore(redis, SETTINGS).usage("p", 1)
    assert (today.turns, today.input_tokens, today.output_tokens) == (1, 7, 5)


async def test_seeding_creates_updates_and_retires_only_seeded_keys(redis: ArqRedis) -> None:
    store = KeyStore(redis, SETTINGS)
    _, made_by_cli = await store.create("cli")
    first, second = "s" * 40, "t" * 40
    await store.seed([SeedKey.model_validate({"project": "a", "secret": first}),
                      SeedKey.model_validate({"project": "b", "secret": second, "rpm": 9})])
    before = {k.project: k for k in await store.list_keys()}
    await store.seed([SeedKey.model_validate({"project": "b", "secret": second, "rpm": 11})])
    after = {k.project: k for k in await store.list_keys()}
    assert set(before) == {"cli", "a", "b"} and set(after) == {"cli", "b"}
    assert after["b"].id == before["b"].id and after["b"].rpm == 11
    assert await Limiter(redis).authorize(digest(made_by_cli)) is not None


def test_seed_entries_are_checked() -> None:
    with pytest.raises(ValueError):
        SeedKey.model_validate({"project": "p", "secret": "too-short"})
    with pytest.raises(ValueError):
        SeedKey.model_validate({"project": "has space", "secret": "x" * 40})
    assert SeedKey.model_validate_json(json.dumps({"project": "p", "secret": "x" * 40})).rpm is None


@pytest.mark.parametrize(
    ("header", "secret"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Bearer", None), ("Basic abc", None), (None, None)],
)
def test_only_a_bearer_token_is_taken_as_a_key(header: str | None, secret: str | None) -> None:
    assert _bearer(header) == secret


@pytest.mark.parametrize(("ms", "text"), [(0, "0ms"), (999, "999ms"), (1000, "1s"), (1500, "1.5s"),
                                         (60_000, "1m0s"), (59_999, "59.999s"), (61_250, "1m1.25s")])
def test_reset_durations_use_openais_format(ms: int, text: str) -> None:
    assert duration(ms) == text
