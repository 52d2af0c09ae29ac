"""How much history a turn sends: `truncation: "auto"` windows it by the agent's token budget; "disabled"
sends all of it, and an upstream that rejects the length fails the turn with `context_length_exceeded`.

Token counts are estimates (about four characters a token; images by their detail level), made once per
conversation item and kept in a hash beside the conversation, so a long conversation is not re-measured
on every turn. The window is cut between exchanges, never inside one: a function call and its result
always travel together, or a Chat Completions upstream would reject the prompt.
"""

from __future__ import annotations

import json
import math

import openai
from openai import AsyncOpenAI
from redis.asyncio import Redis

from shared import compaction_item, conversation_record, response_record
from shared.models import Item, Status, TurnOutcome, TurnRequest
from shared.settings import Settings
from worker import compaction
from worker.agents import Agent
from worker.prompt import exchanges, window

_CHARS_PER_TOKEN = 4
_ITEM_OVERHEAD = 4  # role and separators each message costs upstream
# OpenAI's prices for an image: a flat 85 tokens at low detail, 765 for a typical 1024-px image otherwise.
_IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 765}


def estimate_tokens(item: Item) -> int:
    """A rough count of the prompt tokens an item costs once it is a Chat Completions message."""
    kind = item.get("type", "message")
    if kind == "reasoning":
        return 0  # never sent upstream (see prompt.to_messages)
    if kind == "function_call":
        text = f"{item.get('name', '')}{item.get('arguments', '')}"
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else json.dumps(output)
    else:
        content = item.get("content")
        if isinstance(content, str):
            text = content
        else:
            parts = content or []
            text = "".join(str(p.get("text") or p.get("refusal") or "") for p in parts)
            text += "".join(str(p.get("file_data") or "") for p in parts if p.get("type") == "input_file")
            images = sum(_IMAGE_TOKENS.get(p.get("detail") or "auto", 765) for p in parts
                         if p.get("type") == "input_image")
            return _ITEM_OVERHEAD + _text_tokens(text) + images
    return _ITEM_OVERHEAD + _text_tokens(text)


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


def fit(items: list[Item], tokens: list[int], budget: int, keep: frozenset[str] = frozenset()) -> list[Item]:
    """The most recent whole exchanges whose estimates add up to at most `budget`.

    An exchange holding a call in `keep` (one the new input answers) is always sent: without it the
    input's result would answer nothing.
    """
    cost = {id(item): n for item, n in zip(items, tokens, strict=True)}
    kept: list[list[Item]] = []
    spent = 0
    for group in reversed(exchanges(items)):
        size = sum(cost[id(item)] for item in group)
        needed = any(i.get("type") == "function_call" and i.get("call_id") in keep for i in group)
        if spent + size > budget and not needed:
            break
        kept.append(group)
        spent += size
    return [item for group in reversed(kept) for item in group]


async def conversation_estimates(redis: Redis, conversation_id: str, items: list[Item], ttl_s: int) -> list[int]:
    """Each item's estimate from the conversation's hash; items not in it yet are estimated and stored."""
    stored = await conversation_record.token_estimates(redis, conversation_id, [str(i.get("id")) for i in items])
    estimates: list[int] = []
    fresh: dict[str, int] = {}
    for item, known in zip(items, stored, strict=True):
        if known is None:
            fresh[str(item.get("id"))] = estimate = estimate_tokens(item)
        else:
            estimate = known
        estimates.append(estimate)
    if fresh:
        await conversation_record.store_token_estimates(redis, conversation_id, fresh, ttl_s)
    return estimates


async def history(
    redis: Redis, req: TurnRequest, agent: Agent, settings: Settings, client: AsyncOpenAI
) -> list[Item]:
    """The history items the turn sends upstream, before its own input."""
    if req.conversation_id:
        items = await _conversation_history(redis, req, agent, settings, client)
        if req.truncation == "disabled":
            return items
        tokens = await conversation_estimates(redis, req.conversation_id, items, settings.conversation_ttl_s)
    elif req.previous_response_id:
        limit = settings.history_max_items
        if req.context is not None:
            chain = req.context  # a store:false chain, carried from the API's WebSocket state
        else:
            depth = response_record.WHOLE_CHAIN if req.truncation == "disabled" else limit
            chain = await response_record.chain_items(redis, req.previous_response_id, depth, req.project)
        if req.truncation == "disabled":
            return chain
        items = window(chain, limit)
        tokens = [estimate_tokens(i) for i in items]
    else:
        return []
    return fit(items, tokens, _history_budget(req, agent), _answered_calls(req.input))


async def _conversation_history(
    redis: Redis, req: TurnRequest, agent: Agent, settings: Settings, client: AsyncOpenAI
) -> list[Item]:
    """The conversation as it counts: since its last compaction if it has one, compacted now if past the
    threshold, and (truncation "auto") read from at most its newest history_max_items items."""
    assert req.conversation_id is not None
    conversation, ttl = req.conversation_id, settings.conversation_ttl_s
    limit = None if req.truncation == "disabled" else settings.history_max_items
    threshold = compaction.threshold(req, agent)
    view = await compaction.load_view(redis, conversation, limit, ttl)
    if view is None:
        if threshold is None and limit is not None:
            return window(await conversation_record.items(redis, conversation, -limit, -1), limit)
        # Read whole: "disabled" sends it all, and a first compaction must see the first turn's facts.
        rows = await conversation_record.items(redis, conversation)
        view = compaction.View(rows, list(range(len(rows))))
    if threshold is not None:
        tokens = await conversation_estimates(redis, conversation, view.items, ttl)
        if sum(tokens) > threshold:
            # The newest exchanges worth up to half the threshold stay verbatim; the rest is summarised.
            keep = len(fit(view.items, tokens, threshold // 2, _answered_calls(req.input)))
            compacted = await compaction.compact(
                redis, client, conversation, agent, view, tokens=tokens, keep=keep, chunk_tokens=threshold,
                timeout_s=settings.first_token_timeout_s, ttl_s=ttl,
            )
            view = compacted or view
    return window(view.items, len(view.items))


async def compacted_context(
    req: TurnRequest, agent: Agent, history_items: list[Item], settings: Settings, client: AsyncOpenAI
) -> TurnOutcome:
    """POST /v1/responses/compact: the whole context (chain and input) as one compaction item."""
    items = history_items + req.input
    tokens = [estimate_tokens(i) for i in items]
    chunk = compaction.chunk_tokens(req, agent)
    summary, usage = await compaction.summarise(
        client, agent, items, tokens, chunk, settings.first_token_timeout_s, req
    )
    if summary is None:
        error = {"code": "server_error", "message": "the model produced no summary of the context"}
        return TurnOutcome(status=Status.FAILED, error=error, usage=usage)
    return TurnOutcome(status=Status.COMPLETED, output=[compaction_item.new(summary)], usage=usage)


def _history_budget(req: TurnRequest, agent: Agent) -> int:
    """What is left of the agent's budget once the fixed parts of the prompt and the reply are counted."""
    instructions = f"{agent.instructions}{req.instructions or ''}"
    tools = [t.chat_schema() for t in agent.tools] + req.tools
    fixed = _text_tokens(instructions) + sum(estimate_tokens(i) for i in req.input) + _text_tokens(json.dumps(tools))
    reply = req.max_output_tokens or agent.max_output_tokens or 0
    return agent.context_budget_tokens - fixed - reply


def _answered_calls(new_input: list[Item]) -> frozenset[str]:
    return frozenset(str(i["call_id"]) for i in new_input if i.get("type") == "function_call_output")


def is_context_overflow(exc: openai.APIStatusError) -> bool:
    """OpenAI says so with a code; vLLM, llama.cpp and Ollama only in the message."""
    if exc.code == "context_length_exceeded":
        return True
    message = exc.message.lower()
    return exc.status_code == 400 and any(
        phrase in message for phrase in ("maximum context length", "context length", "context window")
    )
