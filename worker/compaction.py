"""Compaction: once a conversation's history passes a token threshold, the model summarises its older part
into one `compaction` item, which is sent upstream in place of what it replaced from then on.

The item is appended to the conversation's items (so listing shows when it happened) and a small pointer
records where the history that still counts starts: the newest compaction item is sent first, then the
items it kept verbatim (the most recent exchanges), then everything added since. The next compaction
summarises that same view, previous summary included, so facts from the first turn survive any number
of turns while the prompt stays bounded.

The conversation has one writer at a time (its turns run in order), so the list index and the append
cannot race; a re-run of the turn finds the history already compacted and does not compact again.
The item's format is in shared/compaction_item.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

from openai import AsyncOpenAI
from redis.asyncio import Redis

from shared import compaction_item, conversation_record
from shared.models import Item, TurnRequest, Usage
from worker.agents import Agent
from worker.prompt import SUMMARY_PREFIX, exchanges, to_messages

log = logging.getLogger(__name__)

SUMMARY_INSTRUCTIONS = (
    "Summarize the conversation so far for your own later use. Keep every fact the user stated (names, "
    "numbers, preferences, decisions), every open task, and what tools returned; drop pleasantries. "
    "Write plain sentences."
)
# With no threshold given, a request asking for compaction compacts at this share of the agent's budget.
_DEFAULT_SHARE = 0.8


@dataclass(frozen=True)
class View:
    """The history that still counts: `items`, and where each sits in the conversation's list."""

    items: list[Item]
    positions: list[int]


def threshold(req: TurnRequest, agent: Agent) -> int | None:
    if req.compact_threshold is not None:
        return req.compact_threshold
    if agent.compact_threshold_tokens is not None:
        return agent.compact_threshold_tokens
    return int(agent.context_budget_tokens * _DEFAULT_SHARE) if req.compact else None


async def load_view(redis: Redis, conversation_id: str, tail: int | None, ttl_s: int) -> View | None:
    """The compacted view of the conversation; None if it was never compacted.

    `tail` bounds how many of the newest items are read (None: all since the compaction).
    """
    pointer = await conversation_record.compaction_pointer(redis, conversation_id, ttl_s)
    if pointer is None:
        return None
    start = pointer.kept_from
    rows = await conversation_record.items(redis, conversation_id, start, -1)
    first = max(0, len(rows) - tail) if tail is not None else 0
    items: list[Item] = [rows[pointer.index - start]]
    positions = [pointer.index]
    for offset in range(first, len(rows)):
        if start + offset != pointer.index:
            items.append(rows[offset])
            positions.append(start + offset)
    return View(items, positions)


async def compact(
    redis: Redis,
    client: AsyncOpenAI,
    conversation_id: str,
    agent: Agent,
    view: View,
    *,
    tokens: list[int],
    keep: int,
    chunk_tokens: int,
    timeout_s: float,
    ttl_s: int,
) -> View | None:
    """Summarises all but the newest `keep` items of `view` into a new compaction item; None if it could not.

    The older part is summarised a chunk of whole exchanges (at most `chunk_tokens`) at a time, each
    summary carried into the next, so history longer than the model's context can still be compacted
    (compaction switched on for a conversation that is already long, say).
    """
    cut = len(view.items) - keep
    if cut <= 0:
        return None
    summary, _ = await summarise(client, agent, view.items[:cut], tokens[:cut], chunk_tokens, timeout_s)
    if summary is None:
        log.warning("compacting conversation %s failed; the turn goes on uncompacted", conversation_id)
        return None
    item = compaction_item.new(summary)
    kept_from = view.positions[cut] if keep else None
    pointer = await conversation_record.append_compaction(redis, conversation_id, item, kept_from, ttl_s)
    return View([item, *view.items[cut:]], [pointer.index, *view.positions[cut:]])


async def summarise(
    client: AsyncOpenAI,
    agent: Agent,
    items: list[Item],
    tokens: list[int],
    chunk_tokens: int,
    timeout_s: float,
    req: TurnRequest | None = None,
) -> tuple[str | None, Usage]:
    """One summary of `items`, made a chunk at a time (None if the model failed or said nothing), and the
    tokens it took. `req`, for POST /v1/responses/compact, adds its instructions and prompt_cache_key."""
    summary: str | None = None
    usage = Usage()
    for chunk in _chunks(items, tokens, chunk_tokens):
        summary, used = await _summarise(client, agent, summary, chunk, timeout_s, req)
        usage = usage.add(used)
        if summary is None:
            break
    return summary, usage


def chunk_tokens(req: TurnRequest, agent: Agent) -> int:
    return threshold(req, agent) or int(agent.context_budget_tokens * _DEFAULT_SHARE)


def _chunks(items: list[Item], tokens: list[int], budget: int) -> list[list[Item]]:
    chunks: list[list[Item]] = [[]]
    size = 0
    cost = {id(item): n for item, n in zip(items, tokens, strict=True)}
    for group in exchanges(items):
        group_size = sum(cost[id(i)] for i in group)
        if chunks[-1] and size + group_size > budget:
            chunks.append([])
            size = 0
        chunks[-1].extend(group)
        size += group_size
    return [c for c in chunks if c]


async def _summarise(
    client: AsyncOpenAI, agent: Agent, previous: str | None, chunk: list[Item], timeout_s: float,
    req: TurnRequest | None,
) -> tuple[str | None, Usage]:
    instructions = SUMMARY_INSTRUCTIONS + (f"\n\n{req.instructions}" if req and req.instructions else "")
    extra = {"prompt_cache_key": req.prompt_cache_key} if req and req.prompt_cache_key else {}
    messages = [{"role": "system", "content": instructions}]
    if previous is not None:
        messages.append({"role": "system", "content": f"{SUMMARY_PREFIX}\n{previous}"})
    messages += to_messages("", chunk)
    try:
        async with asyncio.timeout(timeout_s):
            reply = await client.chat.completions.create(
                model=agent.model, messages=cast(Any, messages), **cast(Any, extra)
            )
    except Exception as exc:
        log.warning("summarising for compaction failed: %s", exc)
        return None, Usage()
    summary = (reply.choices[0].message.content or "").strip() if reply.choices else ""
    used = Usage()
    if reply.usage is not None:
        used = Usage(input_tokens=reply.usage.prompt_tokens, output_tokens=reply.usage.completion_tokens)
    return summary or None, used
