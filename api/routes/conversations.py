"""/v1/conversations: durable, server-side conversation state that turns read and append to."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter

from api.deps import ServicesDep
from api.errors import not_found
from api.listing import Page, paginate
from api.schemas import CreateConversationBody, UpdateConversationBody, normalise_input
from shared import ids, keys
from shared.records import conversation_items, load_conversation

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


@router.post("")
async def create_conversation(svc: ServicesDep, body: CreateConversationBody | None = None) -> dict[str, Any]:
    """Create a conversation, optionally seeded with up to 20 items."""
    body = body or CreateConversationBody()
    items = normalise_input(body.items, "items") if body.items else []
    conversation_id = ids.conversation_id()
    conversation = {
        "id": conversation_id,
        "object": "conversation",
        "created_at": int(time.time()),
        "metadata": body.metadata or {},
    }
    ttl = svc.settings.conversation_ttl_s
    async with svc.redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.conversation(conversation_id), json.dumps(conversation), ex=ttl)
        if items:
            pipe.rpush(keys.conversation_items(conversation_id), *(json.dumps(i) for i in items))
            pipe.expire(keys.conversation_items(conversation_id), ttl)
        await pipe.execute()
    return conversation


@router.get("/{conversation_id}")
async def get_conversation(conversation_id: str, svc: ServicesDep) -> dict[str, Any]:
    """Retrieve a conversation."""
    return await _conversation(svc, conversation_id)


@router.post("/{conversation_id}")
async def update_conversation(
    conversation_id: str, body: UpdateConversationBody, svc: ServicesDep
) -> dict[str, Any]:
    """Replace a conversation's metadata."""
    conversation = await _conversation(svc, conversation_id)
    conversation["metadata"] = body.metadata
    await svc.redis.set(keys.conversation(conversation_id), json.dumps(conversation), keepttl=True)
    return conversation


@router.delete("/{conversation_id}")
async def delete_conversation(conversation_id: str, svc: ServicesDep) -> dict[str, Any]:
    """Delete a conversation and its items; responses that used it stay retrievable."""
    await _conversation(svc, conversation_id)
    await svc.redis.delete(
        keys.conversation(conversation_id),
        keys.conversation_items(conversation_id),
        keys.conversation_item_tokens(conversation_id),
        keys.conversation_compaction(conversation_id),
    )
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


@router.get("/{conversation_id}/items")
async def list_items(
    conversation_id: str,
    svc: ServicesDep,
    page: Page,
) -> dict[str, Any]:
    """List a conversation's items, newest first by default."""
    await _conversation(svc, conversation_id)
    return paginate(await conversation_items(svc.redis, conversation_id), page)


@router.get("/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: str, item_id: str, svc: ServicesDep) -> dict[str, Any]:
    """Retrieve one item of a conversation."""
    await _conversation(svc, conversation_id)
    for item in await conversation_items(svc.redis, conversation_id):
        if item.get("id") == item_id:
            return item
    raise not_found("Item", item_id)


async def _conversation(svc: ServicesDep, conversation_id: str) -> dict[str, Any]:
    conversation = await load_conversation(svc.redis, conversation_id)
    if conversation is None:
        raise not_found("Conversation", conversation_id)
    return conversation
