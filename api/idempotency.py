"""Idempotency-Key on creates: a retried POST answers with what the first one created, never a second turn.

Follows the IETF draft (draft-ietf-httpapi-idempotency-key-header). A key is remembered per project and
per route for TURNSTREAM_IDEMPOTENCY_TTL_S, with a fingerprint of the request body:

- same key, same body, first request accepted ...... the same object again (a replay)
- same key, same body, first request still running . 409 after a short wait (the openai SDK retries it)
- same key, another body ........................... 422

A request first claims the key for the id it is about to create; the step that stores the object also
marks the claim accepted, but only if the claim is still its own (a WATCH transaction for a conversation,
the accept script for a turn). So exactly one request
creates the object, even when the first answer was lost and the client retried meanwhile. A claim whose
request died before storing is taken over by a retry after _STALE_MS; should the stalled request wake up,
its store is refused instead of creating a second object.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from api.errors import APIError, invalid
from shared import keys
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

    async def guard(self, pipe: Pipeline) -> None:
        """Called first in the transaction that stores the object; makes that transaction mark the claim."""
        await pipe.watch(self.key)
        raw = await pipe.get(self.key)
        if raw is None or json.loads(raw).get("id") != self.object_id:
            raise in_use()  # taken over after this request stalled: the other one creates the object
        pipe.multi()
        accepted = {"fingerprint": self.fingerprint, "id": self.object_id, "state": "accepted", "at": _now_ms()}
        pipe.set(self.key, json.dumps(accepted), ex=self.ttl_s)

    def mark(self) -> ClaimMark:
        """The claim as a turn's accept script marks it accepted, in the same step that stores the turn."""
        accepted = {"fingerprint": self.fingerprint, "id": self.object_id, "state": "accepted", "at": _now_ms()}
        return ClaimMark(self.key, json.dumps(accepted), self.ttl_s)

    async def abandon(self) -> None:
        """The create failed before storing anything: a retry may create the object at once."""
        await scripts(self.redis).abandon_idempotency_key(keys=[self.key], args=[self.object_id])


async def claim(
    redis: Redis, ttl_s: int, project: str, scope: str, idempotency_key: str, body: BaseModel, new_id: str
) -> Claim:
    """Claims the key for `new_id`, or finds the object an earlier request with the same key created."""
    if not 0 < len(idempotency_key) <= _MAX_KEY_CHARS:
        raise invalid(f"Idempotency-Key must be 1 to {_MAX_KEY_CHARS} characters.", "Idempotency-Key")
    key = keys.idempotency(project, scope, hashlib.sha256(idempotency_key.encode()).hexdigest())
    canonical = json.dumps(body.model_dump(mode="json", exclude_unset=True), sort_keys=True, separators=(",", ":"))
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
    script = scripts(redis).claim_idempotency_key
    deadline = time.monotonic() + _PENDING_WAIT_S
    while True:
        state, object_id = await script(keys=[key], args=[fingerprint, new_id, _STALE_MS, ttl_s])
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
    """Around storing the object a claim is for: if another request took the key over meanwhile (the store's
    transaction saw the claim change) the answer is 409; any other failure frees the key for a retry (a
    claim the store marked accepted stays: see `abandon`)."""
    try:
        yield
    except WatchError:
        raise in_use() from None
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
