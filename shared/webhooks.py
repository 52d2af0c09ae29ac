"""Webhook endpoints and events, signed per the Standard Webhooks spec (standardwebhooks.com).

A project registers endpoints (`turnstream webhooks add`); each has its own signing secret `whsec_...`.
When a turn of that project finishes, the commit script itself pushes an outbox entry (atomically with
the commit, see shared/turn_state.py), and workers deliver it to every subscribed endpoint
(worker/webhook_delivery.py): at least once, retried with backoff, under one `webhook-id` per event so
a receiver can drop repeats.

Events are OpenAI's (`{"id": "evt_...", "object": "event", "type", "created_at", "data": {"id"}}`):
response.completed / failed / cancelled / incomplete, and response.requires_action when a completed
response ends waiting on the client's own function calls (sent besides response.completed).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from shared import ids, keys

COMPLETED = "response.completed"
REQUIRES_ACTION = "response.requires_action"
EVENT_TYPES = (COMPLETED, "response.failed", "response.cancelled", "response.incomplete", REQUIRES_ACTION)

EVENT_PREFIX = "evt"
ENDPOINT_PREFIX = "we"
_SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes


class WebhookError(ValueError):
    """Raised when an endpoint cannot be registered (bad URL, unknown event, too many endpoints)."""


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    secret: str
    events: list[str] = field(default_factory=lambda: list(EVENT_TYPES))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Endpoint:
        return cls(**json.loads(raw))


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt of `body`."""
    signature = Webhook(secret).sign(webhook_id, datetime.fromtimestamp(timestamp, tz=UTC), body)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


# --- endpoints -----------------------------------------------------------------------------------


async def add_endpoint(redis: Redis, project: str, url: str, events: list[str], max_endpoints: int) -> Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise WebhookError(f"the webhook URL must be an absolute http(s) URL, got {url!r}")
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown or not events:
        raise WebhookError(f"unknown event types {unknown}; choose from {', '.join(EVENT_TYPES)}")
    if await redis.hlen(keys.webhook_endpoints(project)) >= max_endpoints:
        raise WebhookError(
            f"project {project!r} already has {max_endpoints} endpoints (TURNSTREAM_WEBHOOK_MAX_ENDPOINTS)"
        )
    endpoint = Endpoint(
        id=ids.new_id(ENDPOINT_PREFIX), url=url, secret=new_secret(), events=[e for e in EVENT_TYPES if e in events]
    )
    await redis.hset(keys.webhook_endpoints(project), endpoint.id, endpoint.to_json())
    return endpoint


async def has_endpoints(redis: Redis, project: str) -> bool:
    """Whether a finished turn of the project is announced: its commit writes the outbox entry only then (the
    endpoints are the project's, in a slot of their own on a cluster, so the commit is told, not reading it)."""
    return bool(await redis.exists(keys.webhook_endpoints(project)))


async def list_endpoints(redis: Redis, project: str) -> list[Endpoint]:
    raw = await redis.hgetall(keys.webhook_endpoints(project))
    return sorted((Endpoint.from_json(v) for v in raw.values()), key=lambda e: (e.created_at, e.url))


async def get_endpoint(redis: Redis, project: str, endpoint_id: str) -> Endpoint | None:
    raw = await redis.hget(keys.webhook_endpoints(project), endpoint_id)
    return Endpoint.from_json(raw) if raw else None


async def remove_endpoint(redis: Redis, project: str, endpoint_id: str) -> bool:
    # Deliveries already queued for it are dropped when they come due.
    return bool(await redis.hdel(keys.webhook_endpoints(project), endpoint_id))


# --- events ----------------------------------------------------------------------------------------


def event_types(status: str, response: dict[str, Any]) -> list[str]:
    """The events a response that ended in `status` sends."""
    types = [f"response.{status}"]
    if status == "completed" and _awaits_client_calls(response.get("output") or []):
        types.append(REQUIRES_ACTION)
    return types


def _awaits_client_calls(output: list[dict[str, Any]]) -> bool:
    """Whether the response ended waiting on the client: its own function calls, or a tool call to approve."""
    answered = {item.get("call_id") for item in output if item.get("type") == "function_call_output"}
    return any(
        (item.get("type") == "function_call" and item.get("call_id") not in answered)
        or item.get("type") == "mcp_approval_request"
        for item in output
    )


def outbox_entry(project: str, response_id: str, status: str, response: dict[str, Any]) -> str:
    """What the commit pushes to the outbox: the events (ids fixed here, so every retry sends the same ones)."""
    now = int(time.time())
    events = [
        {"id": ids.new_id(EVENT_PREFIX), "object": "event", "type": t, "created_at": now, "data": {"id": response_id}}
        for t in event_types(status, response)
    ]
    return json.dumps({"project": project, "events": events})
