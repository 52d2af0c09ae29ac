"""/v1/conversations: durable, server-side conversation state that turns read and append to."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response

from api import idempotency
from api.auth import CallerDep
from api.deps import ServicesDep
from api.errors import APIError, invalid, not_found
from api.idempotency import IdempotencyKey
from api.json_body import JSONBodyRoute
from api.listing import Page, paginate
from api.schemas import CreateConversationBody, UpdateConversationBody, normalise_input
from api.sse import SSEResponse, ensure_capacity, resume_after
from shared import conversation_feed as feed
from shared import conversation_index, conversation_record, ids, partitions
from shared.events import MAX_SEQUENCE_NUMBER
from shared.models import DEFAULT_PROJECT

router = APIRouter(prefix="/v1/conversations", tags=["conversations"], route_class=JSONBodyRoute)


@router.post("")
async def create_conversation(
    svc: ServicesDep,
    caller: CallerDep,
    body: CreateConversationBody | None = None,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Create a conversation, optionally seeded with up to 20 items."""
    body = body or CreateConversationBody()
    items = normalise_input(body.items, "items") if body.items else []
    conversation_id = ids.conversation_id(partitions.for_new())
    once = None
    if idempotency_key is not None:
        once = await idempotency.claim(
            svc.redis, svc.settings.idempotency_ttl_s, caller.project, "conversations", idempotency_key, body,
            ids.conversation_id,
        )
        if once.replay:
            return await _conversation(svc, once.object_id, caller.project)
        conversation_id = once.object_id
    conversation = {
        "id": conversation_id,
        "object": "conversation",
        "created_at": int(time.time()),
        "metadata": body.metadata or {},
    }
    ttl = svc.settings.conversation_ttl_s
    async with idempotency.settled(once):
        if not await conversation_record.create(
            svc.redis, conversation, caller.project, items, ttl, once.mark() if once is not None else None
        ):
            raise idempotency.in_use()  # taken over after this request stalled: the other one creates it
    return conversation


@router.get("")
async def list_conversations(svc: ServicesDep, caller: CallerDep, page: Page) -> dict[str, Any]:
    """List the project's conversations, newest first by default (an extension: OpenAI has no such list)."""
    if page.after is not None and not ids.is_id(page.after, ids.CONVERSATION):
        raise invalid(f"No conversation with id '{page.after}' to page after.", "after")
    try:
        found = await conversation_record.list_page(
            svc.redis, caller.project, limit=page.limit, order=page.order, after=page.after
        )
    except conversation_index.CursorNotFound:
        raise invalid(f"No conversation with id '{page.after}' to page after.", "after") from None
    return {
        "object": "list",
        "data": found.data,
        "first_id": found.data[0]["id"] if found.data else None,
        "last_id": found.data[-1]["id"] if found.data else None,
        "has_more": found.has_more,
    }


@router.get("/{conversation_id}")
async def get_conversation(conversation_id: str, svc: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """Retrieve a conversation."""
    return await _conversation(svc, conversation_id, caller.project)


@router.post("/{conversation_id}")
async def update_conversation(
    conversation_id: str, body: UpdateConversationBody, svc: ServicesDep, caller: CallerDep
) -> dict[str, Any]:
    """Replace a conversation's metadata."""
    conversation = await _conversation(svc, conversation_id, caller.project)
    conversation["metadata"] = body.metadata
    await conversation_record.replace(svc.redis, conversation, caller.project)
    return conversation


@router.delete("/{conversation_id}")
async def delete_conversation(conversation_id: str, svc: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """Delete a conversation and its items; responses that used it stay retrievable."""
    await _conversation(svc, conversation_id, caller.project)
    await conversation_record.delete(svc.redis, conversation_id, caller.project)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


@router.get("/{conversation_id}/items")
async def list_items(
    conversation_id: str,
    svc: ServicesDep,
    caller: CallerDep,
    page: Page,
) -> dict[str, Any]:
    """List a conversation's items, newest first by default."""
    await _conversation(svc, conversation_id, caller.project)
    return paginate(await conversation_record.items(svc.redis, conversation_id), page)


@router.get("/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: str, item_id: str, svc: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """Retrieve one item of a conversation."""
    await _conversation(svc, conversation_id, caller.project)
    if ids.is_item_id(item_id):
        for item in await conversation_record.items(svc.redis, conversation_id):
            if item.get("id") == item_id:
                return item
    raise not_found("Item", item_id)


@router.get("/{conversation_id}/events")
async def conversation_events(
    conversation_id: str,
    svc: ServicesDep,
    caller: CallerDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1, le=MAX_SEQUENCE_NUMBER)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    limit: Annotated[int, Query(ge=1, le=feed.PAGE_MAX)] = feed.PAGE_MAX,
) -> Response:
    """Every event of every turn of the conversation: with stream=true, live from now (or after a cursor)."""
    await _conversation(svc, conversation_id, caller.project)
    if svc.settings.conversation_feed_ttl_s == 0:
        raise APIError(
            501,
            "Conversation feeds are off on this deployment (TURNSTREAM_CONVERSATION_FEED_TTL_S=0).",
            code="conversation_feed_off",
        )
    last = await feed.last_entry(svc.redis, conversation_id)
    # Without a cursor a live feed starts now, and a listing from the oldest event kept.
    default = last if stream else -1
    after = resume_after(starting_after, last_event_id, last=last, source="conversation", default=default)
    if not stream:
        return JSONResponse(await feed.page(svc.redis, conversation_id, after, limit))
    ensure_capacity(svc.fanout)
    return SSEResponse(svc.fanout, conversation_id, after)


async def _conversation(svc: ServicesDep, conversation_id: str, project: str) -> dict[str, Any]:
    """The conversation as clients see it; another project's is answered exactly as a missing one."""
    # A malformed id is as absent as an unknown one, and never reaches Redis as (part of) a key.
    valid = ids.is_id(conversation_id, ids.CONVERSATION)
    conversation = await conversation_record.load(svc.redis, conversation_id) if valid else None
    if conversation is None or conversation.pop("project", DEFAULT_PROJECT) != project:
        raise not_found("Conversation", conversation_id)
    return conversation

