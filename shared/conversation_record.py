"""A conversation's keys — the object, its items, their token estimates, its compaction pointer — and every read
or write of them outside the Lua scripts (which append a turn's items as it commits)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys
from shared.models import DEFAULT_PROJECT, Item


async def load(redis: Redis, conversation_id: str) -> dict[str, Any] | None:
    """The stored conversation: the object the API returns, plus its `project` (which the API strips)."""
    raw = await redis.get(keys.conversation(conversation_id))
    return json.loads(raw) if raw else None


async def project_of(redis: Redis, conversation_id: str) -> str | None:
    """The project a conversation belongs to, or None if there is no such conversation."""
    conversation = await load(redis, conversation_id)
    return None if conversation is None else conversation.get("project", DEFAULT_PROJECT)


def stored(conversation: dict[str, Any], project: str) -> str:
    return json.dumps({**conversation, "project": project})


def create_in(pipe: Pipeline, conversation: dict[str, Any], project: str, items: list[Item], ttl_s: int) -> None:
    """Queues a new conversation's writes on a transaction (the caller's, which may guard an Idempotency-Key)."""
    conversation_id = conversation["id"]
    pipe.set(keys.conversation(conversation_id), stored(conversation, project), ex=ttl_s)
    if items:
        pipe.rpush(keys.conversation_items(conversation_id), *(json.dumps(i) for i in items))
        pipe.expire(keys.conversation_items(conversation_id), ttl_s)


async def replace(redis: Redis, conversation: dict[str, Any], project: str) -> None:
    """Writes the conversation object back (its metadata changed); its TTL is kept."""
    await redis.set(keys.conversation(conversation["id"]), stored(conversation, project), keepttl=True)


async def delete(redis: Redis, conversation_id: str) -> None:
    """Deletes the conversation and its items; a turn running on it commits nothing to it (see finish_turn.lua)."""
    await redis.delete(
        keys.conversation(conversation_id),
        keys.conversation_items(conversation_id),
        keys.conversation_item_tokens(conversation_id),
        keys.conversation_compaction(conversation_id),
    )


async def items(redis: Redis, conversation_id: str, start: int = 0, end: int = -1) -> list[Item]:
    return [json.loads(raw) for raw in await redis.lrange(keys.conversation_items(conversation_id), start, end)]


async def item_count(redis: Redis, conversation_id: str) -> int:
    return int(await redis.llen(keys.conversation_items(conversation_id)))


async def token_estimates(redis: Redis, conversation_id: str, item_ids: list[str]) -> list[int | None]:
    """The stored prompt-token estimate of each item, None where there is none yet."""
    if not item_ids:
        return []
    stored_ = await redis.hmget(keys.conversation_item_tokens(conversation_id), item_ids)
    return [None if raw is None else int(raw) for raw in stored_]


async def store_token_estimates(redis: Redis, conversation_id: str, estimates: dict[str, int], ttl_s: int) -> None:
    key = keys.conversation_item_tokens(conversation_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=estimates)
        pipe.expire(key, ttl_s)  # goes with the conversation, whose TTL every turn renews
        await pipe.execute()


@dataclass(frozen=True)
class CompactionPointer:
    """Where the newest compaction item is in the item list, and the oldest item it kept verbatim: history sent
    upstream is that item, then the items from `kept_from` on."""

    index: int
    kept_from: int


async def compaction_pointer(redis: Redis, conversation_id: str, ttl_s: int) -> CompactionPointer | None:
    key = keys.conversation_compaction(conversation_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.expire(key, ttl_s)  # lives as long as the conversation, whose TTL every turn renews
        raw, _ = await pipe.execute()
    if raw is None:
        return None
    pointer = json.loads(raw)
    return CompactionPointer(pointer["index"], pointer["kept_from"])


async def append_compaction(
    redis: Redis, conversation_id: str, item: Item, kept_from: int | None, ttl_s: int
) -> CompactionPointer:
    """Appends a compaction item and points at it; `kept_from` None means it kept nothing verbatim."""
    items_key = keys.conversation_items(conversation_id)
    index = await redis.llen(items_key)
    pointer = CompactionPointer(index, index if kept_from is None else kept_from)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.rpush(items_key, json.dumps(item))
        pipe.set(
            keys.conversation_compaction(conversation_id),
            json.dumps({"index": pointer.index, "kept_from": pointer.kept_from}),
            ex=ttl_s,
        )
        await pipe.execute()
    return pointer
