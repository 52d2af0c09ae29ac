"""Reading a conversation's live feed (keys.conversation_feed): every event of its stored turns, in the order
the scripts wrote them, each entry numbered by the feed itself (entry id "<n>-1"), so one cursor follows every
turn of the conversation whichever node or device started it. The API's fan-out tails it live; a gateway
reads it with XRANGE/XREAD like a response's stream.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from shared import keys
from shared.events import decode_entry

PAGE_MAX = 100  # events per listing (GET without stream=true), as OpenAI's lists cap `limit`


async def last_entry(redis: Redis, conversation_id: str) -> int:
    """The number of the feed's newest entry, -1 for an empty (or expired) feed."""
    newest = await redis.xrevrange(keys.conversation_feed(conversation_id), count=1)
    if not newest:
        return -1
    entry_id = newest[0][0]
    return int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])


async def page(redis: Redis, conversation_id: str, after: int, limit: int = PAGE_MAX) -> dict[str, Any]:
    """Up to `limit` events after entry `after`: {object: "list", data, last_event_id, has_more}. Each event
    is the response's event with its `response_id`; `last_event_id` is the cursor to pass on."""
    feed = keys.conversation_feed(conversation_id)
    entries = await redis.xrange(feed, min=f"{after + 1}-0", max="+", count=limit + 1)
    more = len(entries) > limit
    entries = entries[:limit]
    decoded = [decode_entry(fields) for _, fields in entries]
    return {
        "object": "list",
        "data": [orjson.loads(event.data) for event in decoded],
        "last_event_id": decoded[-1].seq if decoded else after,
        "has_more": more,
    }
