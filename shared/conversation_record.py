"""A conversation's keys — the object, its items, their token estimates, its compaction pointer — and every read
or write of them outside the Lua scripts (which append a turn's items as it commits)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared import conversation_index, keys
from shared.lua import scripts
from shared.models import DEFAULT_PROJECT, Item
from shared.turn_accept import ClaimMark


async def load(redis: Redis, conversation_id: str) -> dict[str, Any] | None:
    """The stored conversation: the object the API returns, plus its `project` (which the API strips)."""
    raw = await redis.get(keys.conversation(conversation_id))
    return json.loads(raw) if raw else None


async def load_many(redis: Redis, conversation_ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """Each stored conversation (as `load`), None where it is gone; one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for conversation_id in conversation_ids:
            pipe.get(keys.conversation(conversation_id))
        raws = await pipe.execute()
    return [json.loads(raw) if raw else None for raw in raws]


# Ids read per round trip while filling a page: enough that a page rarely needs a second read even when some of
# its entries expired, few enough that a read stays cheap.
LIST_BATCH = 128


@dataclass(frozen=True)
class ConversationPage:
    data: list[dict[str, Any]]  # as clients see them (no `project`)
    has_more: bool


async def list_page(
    redis: Redis, project: str, *, limit: int, order: conversation_index.Order, after: str | None
) -> ConversationPage:
    """Up to `limit` live conversations of `project` after the cursor (raises conversation_index.CursorNotFound)."""
    start = await conversation_index.start_after(redis, project, after, order)
    found: list[dict[str, Any]] = []
    while len(found) <= limit:  # one more than asked, to tell whether there is more
        ids = await conversation_index.window(redis, project, start, LIST_BATCH, order)
        if not ids:
            break
        gone = []
        for conversation_id, conversation in zip(ids, await load_many(redis, ids), strict=True):
            # The project check is a second lock on the door: the index is per project already.
            if conversation is None or conversation.pop("project", DEFAULT_PROJECT) != project:
                gone.append(conversation_id)
            elif len(found) <= limit:
                found.append(conversation)
        await conversation_index.prune(redis, project, gone)
        # Ranks after the pruned ids moved down by as many as were removed from this window.
        start += len(ids) - len(gone)
    return ConversationPage(found[:limit], len(found) > limit)


def stored(conversation: dict[str, Any], project: str) -> str:
    return json.dumps({**conversation, "project": project})


async def create(
    redis: Redis,
    conversation: dict[str, Any],
    project: str,
    items: list[Item],
    ttl_s: int,
    claim: ClaimMark | None = None,
) -> bool:
    """Creates a conversation with its first items, in one script; under an Idempotency-Key `claim`, only while
    the claim is still this request's (False then, and nothing is written).

    Its project's listing entry comes first, in a step of its own (the index is the project's, in another
    slot on a cluster): an entry whose conversation was never written is dropped by the listing that meets it.
    """
    conversation_id = conversation["id"]
    async with redis.pipeline(transaction=False) as pipe:
        # Milliseconds, so conversations made within one second still list in the order they were made.
        conversation_index.add(pipe, project, conversation_id, int(time.time() * 1000))
        await pipe.execute()
    created = await scripts(redis).create_conversation(
        keys=[
            keys.conversation(conversation_id),
            keys.conversation_items(conversation_id),
            claim.key if claim else keys.conversation(conversation_id),  # unused without a claim
        ],
        args=[
            stored(conversation, project), ttl_s, conversation_id, claim.accepted if claim else "",
            claim.ttl_s if claim else 0, *(json.dumps(i) for i in items),
        ],
    )
    return bool(created)


async def create_if_absent(redis: Redis, conversation: dict[str, Any], project: str, ttl_s: int) -> None:
    """Creates an empty conversation under an id the caller derived (an AG-UI thread's); one that exists is kept.

    Either way it is in its project's list afterwards, like any conversation: a new one listed as made now,
    an existing one where it was (one made before it was listed, or whose entry a crash between the two
    writes left out, joins the list now)."""
    conversation_id = conversation["id"]
    created = await redis.set(keys.conversation(conversation_id), stored(conversation, project), nx=True, ex=ttl_s)
    async with redis.pipeline(transaction=False) as pipe:
        # A new one takes the place of an entry its expired namesake may have left in the index.
        conversation_index.add(pipe, project, conversation_id, int(time.time() * 1000), only_new=not created)
        await pipe.execute()


async def replace(redis: Redis, conversation: dict[str, Any], project: str) -> None:
    """Writes the conversation object back (its metadata changed); its TTL is kept."""
    await redis.set(keys.conversation(conversation["id"]), stored(conversation, project), keepttl=True)


async def delete(redis: Redis, conversation_id: str, project: str) -> None:
    """Deletes the conversation and its items, and takes it off its project's list; a turn running on it commits
    nothing to it (see finish_turn.lua)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(
            keys.conversation(conversation_id),
            keys.conversation_items(conversation_id),
            keys.conversation_item_tokens(conversation_id),
            keys.conversation_compaction(conversation_id),
            keys.conversation_feed(conversation_id),
            keys.conversation_feed_counter(conversation_id),
        )
        conversation_index.remove(pipe, project, conversation_id)
        await pipe.execute()


async def items(redis: Redis, conversation_id: str, start: int = 0, end: int = -1) -> list[Item]:
    return [json.loads(raw) for raw in await redis.lrange(keys.conversation_items(conversation_id), start, end)]


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
    # Read and renewed in one command: it lives as long as the conversation, whose TTL every turn renews.
    raw = await redis.getex(keys.conversation_compaction(conversation_id), ex=ttl_s)
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
