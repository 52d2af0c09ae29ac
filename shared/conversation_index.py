"""Each project's conversations, newest first: the index behind `GET /v1/conversations`.

A sorted set per project (conversation id -> created_at in ms) makes a page cost O(log n + page) at any
number of conversations. Conversations expire on their own TTL (renewed by every turn) while the index has
none, so a listing that meets an id whose conversation is gone drops it there and reads on
(`conversation_record.list_page`): the index is pruned lazily, by the reads that would otherwise skip the
entry again.
"""

from __future__ import annotations

from typing import Literal

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys

Order = Literal["asc", "desc"]


class CursorNotFound(Exception):
    """Raised when the `after` cursor names no conversation of the project's index."""


def add(pipe: Pipeline, project: str, conversation_id: str, created_at_ms: int, *, only_new: bool = False) -> None:
    """Indexes a new conversation; queued on the pipeline (or transaction) that stores it. With `only_new`, an
    id already indexed keeps its place."""
    pipe.zadd(keys.project_conversations(project), {conversation_id: created_at_ms}, nx=only_new)


def remove(pipe: Pipeline, project: str, conversation_id: str) -> None:
    pipe.zrem(keys.project_conversations(project), conversation_id)


async def start_after(redis: Redis, project: str, after: str | None, order: Order) -> int:
    """The rank, in `order`, of the first entry after the cursor (0 without one)."""
    if after is None:
        return 0
    index = keys.project_conversations(project)
    rank = await (redis.zrevrank(index, after) if order == "desc" else redis.zrank(index, after))
    if rank is None:
        raise CursorNotFound(after)
    return int(rank) + 1


async def window(redis: Redis, project: str, start: int, count: int, order: Order) -> list[str]:
    ids = await redis.zrange(keys.project_conversations(project), start, start + count - 1, desc=order == "desc")
    return [i.decode() for i in ids]


async def prune(redis: Redis, project: str, conversation_ids: list[str]) -> None:
    """Drops entries whose conversation is gone (expired)."""
    if conversation_ids:
        await redis.zrem(keys.project_conversations(project), *conversation_ids)
