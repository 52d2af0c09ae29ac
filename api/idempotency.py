"""Idempotency-Key on creates: a retried POST answers with what the first one created, never a second turn.

Follows the IETF draft (draft-ietf-httpapi-idempotency-key-header). A key is remembered per project and
per route for TURNSTREAM_IDEMPOTENCY_TTL_S, with a fingerprint of the request body:

- same key, same body, first request accepted ...... the same object again (a replay)
- same key, same body, first request still running . 409 after a short wait (the openai SDK retries it)
- same key, another body ........................... 422

A request first claims the key for the id it is about to create; the step that stores the object also
marks the claim accepted, but only if the claim is still its own (the conversation's create script, the
turn's accept script). So exactly one request creates the object, even when the first answer was lost and
the client retried meanwhile. A claim whose request died before storing is taken over by a retry after
_STALE_MS; should the stalled request wake up, its store is refused instead of creating a second object.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header
from pydantic import BaseModel
from redis.asyncio import Redis

from api.errors import APIError, invalid
from shared import keys, partitions
from shared.lua import scripts
from shared.redis_conn import text
from shared.turn_accept import ClaimMark

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]

_MAX_KEY_CHARS = 255
_STALE_MS = 10_000  # a claim this old with nothing stored belongs to a request that died
_PENDING_WAIT_S = 2.0  # how long a retry waits for the first request to finish storing
_POLL_S = 0.025

@dataclass
class Claim:
    """One request's hold on an Idempotency-Key."""

    redis: Redis
    key: str  # the Redis key of the claim
    fingerprint: str
    object_id: str
    replay: bool  # the key's object exists already: answer with it, create nothing
    ttl_s: int

    def mark(self) -> ClaimMark:
        """The claim as the script that stores the object (a turn's accept, a conversation's create) marks it
        accepted, in the same step, if it is still this request's."""
        accepted = {"fingerprint": self.fingerprint, "id": self.object_id, "state": "accepted", "at": _now_ms()}
        return ClaimMark(self.key, json.dumps(accepted), self.ttl_s)

    async def abandon(self) -> None:
        """The create failed before storing anything: a retry may create the object at once."""
        await scripts(self.redis).abandon_idempotency_key(keys=[self.key], args=[self.object_id])


async def claim(
    redis: Redis,
    ttl_s: int,
    project: str,
    scope: str,
    idempotency_key: str,
    body: BaseModel,
    new_id: Callable[[str], str],
    conversation_id: str | None = None,
) -> Claim:
    """Claims the key for a new object's id (`new_id(partition digits)`), or finds the object an earlier request
    with the same key created.

    On a cluster the claim is in the partition of the object it creates, since the step that stores the
    object checks it: a turn's conversation's partition, else the one the key's digest picks, so a retry
    finds the same claim."""
    if not 0 < len(idempotency_key) <= _MAX_KEY_CHARS:
        raise invalid(f"Idempotency-Key must be 1 to {_MAX_KEY_CHARS} characters.", "Idempotency-Key")
    key_digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    digits = partitions.for_new(conversation_id, seed=key_digest)
    key = keys.idempotency(project, scope, key_digest, keys.partition_tag(digits))
    new_object_id = new_id(digits)
    canonical = json.dumps(body.model_dump(mode="json", exclude_unset=True), sort_keys=True, separators=(",", ":"))
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
    script = scripts(redis).claim_idempotency_key
    deadline = time.monotonic() + _PENDING_WAIT_S
    while True:
        state, object_id = await script(keys=[key], args=[fingerprint, new_object_id, _STALE_MS, ttl_s])
        state, object_id = text(state), text(object_id)
        if state == "conflict":
            raise APIError(
                422,
                "This Idempotency-Key was already used with a different request body.",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        if state != "pending":
            return Claim(redis, key, fingerprint, object_id, state == "replay", ttl_s)
        if time.monotonic() > deadline:
            raise in_use()
        await asyncio.sleep(_POLL_S)


@contextlib.asynccontextmanager
async def settled(once: Claim | None) -> AsyncIterator[None]:
    """Around storing the object a claim is for: a failure frees the key for a retry (a claim the store marked
    accepted stays: see `abandon`)."""
    try:
        yield
    except BaseException:
        if once is not None:
            await once.abandon()
        raise


def in_use() -> APIError:
    return APIError(
        409,
        "A request with this Idempotency-Key is still being processed; retry it shortly.",
        param="Idempotency-Key",
        code="idempotency_key_in_use",
        retry_after=1,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
