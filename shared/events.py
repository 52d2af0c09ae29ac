"""The event schema: OpenAI Responses streaming events, and how each is stored as a Redis stream entry.

Stream entry (one per event), id "<sequence_number>-1":
    seq      sequence number, 0-based, +1 per event of the response (assigned by Redis, see turn_state)
    type     the event type, e.g. "response.output_text.delta"
    attempt  which run of the turn wrote it (1, 2, ...); a higher attempt means a re-run: drop what the
             lower attempt streamed and rebuild from the new attempt's events
    data     the event JSON, exactly what the SSE `data:` line carries (includes sequence_number)

A finished turn's stream is usually one compact entry holding all of these (shared/stored_form.py).

Builders here return the event without `sequence_number`; Redis splices it in when the entry is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

Event = dict[str, Any]

CREATED = "response.created"
QUEUED = "response.queued"  # background turns only, right after response.created
IN_PROGRESS = "response.in_progress"
COMPLETED = "response.completed"
FAILED = "response.failed"
# OpenAI has no cancelled stream event; a cancelled turn ends with response.incomplete whose
# response.status is "cancelled", which every SDK's event union still accepts.
INCOMPLETE = "response.incomplete"
TERMINAL_TYPES = frozenset({COMPLETED, FAILED, INCOMPLETE})

# Sequence numbers come from HINCRBY, which counts in signed 64 bits: no event is ever numbered higher.
MAX_SEQUENCE_NUMBER = 2**63 - 1

TERMINAL_TYPE_FOR_STATUS = {
    "completed": COMPLETED,
    "failed": FAILED,
    "incomplete": INCOMPLETE,
    "cancelled": INCOMPLETE,
}


@dataclass(frozen=True, slots=True)
class StreamEvent:
    seq: int
    type: str
    attempt: int
    data: str  # JSON text

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def json(self) -> Event:
        result: Event = orjson.loads(self.data)
        return result


def decode_entry(fields: dict[bytes, bytes] | dict[str, str]) -> StreamEvent:
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    return StreamEvent(seq=int(f["seq"]), type=f["type"], attempt=int(f["attempt"]), data=f["data"])


def entry_id(seq: int) -> str:
    return f"{seq}-1"


def seq_at(position: str) -> int:
    """The last sequence number a reader at stream position `position` (an entry id) has seen: "N-1" is event
    N's entry; anything below it ("0-0" for the start) comes before event N."""
    seq, _, part = position.rpartition("-")
    return int(seq) if int(part) >= 1 else int(seq) - 1


def encode(event: Event) -> str:
    # Compact and starting with '{"type":' so Redis can splice the sequence number in front. orjson writes
    # UTF-8 as is and keeps key order; it is several times cheaper than json.dumps per delta.
    return orjson.dumps(event).decode()


def numbered(seq: int, encoded: str) -> str:
    """An encoded event with its sequence number spliced in, byte for byte as the append script stores it."""
    return f'{{"sequence_number":{seq},{encoded[1:]}'


# --- builders ---------------------------------------------------------------------------------


def lifecycle(kind: str, response: dict[str, Any]) -> Event:
    return {"type": kind, "response": response}


def output_item_added(output_index: int, item: dict[str, Any]) -> Event:
    return {"type": "response.output_item.added", "output_index": output_index, "item": item}


def output_item_done(output_index: int, item: dict[str, Any]) -> Event:
    return {"type": "response.output_item.done", "output_index": output_index, "item": item}


# What streams into an item's one content part: a message's text or refusal, or a reasoning item's text.
# Every streamed item here holds exactly one part, so its content_index is always 0.
PartKind = Literal["text", "refusal", "reasoning"]

REASONING_DELTA = "response.reasoning.delta"
REFUSAL_DELTA = "response.refusal.delta"
# Delta events whose bodies carry `delta` text for one item; consecutive ones of an item may be merged.
TEXT_DELTA_TYPES = ("response.output_text.delta", REASONING_DELTA, REFUSAL_DELTA)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def part(kind: PartKind, text: str) -> dict[str, Any]:
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    if kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    return _text_part(text)


def content_part_added(item_id: str, output_index: int, kind: PartKind = "text") -> Event:
    return {
        "type": "response.content_part.added",
        "item_id": item_id,
        "output_index": output_index,
        "content_index": 0,
        "part": part(kind, ""),
    }


def content_part_done(item_id: str, output_index: int, text: str, kind: PartKind = "text") -> Event:
    return {
        "type": "response.content_part.done",
        "item_id": item_id,
        "output_index": output_index,
        "content_index": 0,
        "part": part(kind, text),
    }


def part_delta(kind: PartKind, item_id: str, output_index: int, delta: str) -> Event:
    if kind == "text":
        return text_delta(item_id, output_index, delta)
    # The Open Responses spec names reasoning text events response.reasoning.*; OpenAI's SDK calls the
    # same events response.reasoning_text.* (its stream still parses the spec's; see the README).
    kind_type = REASONING_DELTA if kind == "reasoning" else REFUSAL_DELTA
    return {"type": kind_type, "item_id": item_id, "output_index": output_index, "content_index": 0, "delta": delta}


def part_done(kind: PartKind, item_id: str, output_index: int, text: str) -> Event:
    if kind == "text":
        return text_done(item_id, output_index, text)
    field = "text" if kind == "reasoning" else "refusal"
    return {
        "type": "response.reasoning.done" if kind == "reasoning" else "response.refusal.done",
        "item_id": item_id,
        "output_index": output_index,
        "content_index": 0,
        field: text,
    }


def text_delta(item_id: str, output_index: int, delta: str) -> Event:
    return {
        "type": "response.output_text.delta",
        "item_id": item_id,
        "output_index": output_index,
        "content_index": 0,
        "delta": delta,
        "logprobs": [],
    }


def text_done(item_id: str, output_index: int, text: str) -> Event:
    return {
        "type": "response.output_text.done",
        "item_id": item_id,
        "output_index": output_index,
        "content_index": 0,
        "text": text,
        "logprobs": [],
    }


def arguments_delta(item_id: str, output_index: int, delta: str) -> Event:
    return {
        "type": "response.function_call_arguments.delta",
        "item_id": item_id,
        "output_index": output_index,
        "delta": delta,
    }


def arguments_done(item_id: str, output_index: int, name: str, arguments: str) -> Event:
    return {
        "type": "response.function_call_arguments.done",
        "item_id": item_id,
        "output_index": output_index,
        "name": name,
        "arguments": arguments,
    }


# --- items --------------------------------------------------------------------------------------


def message_item(item_id: str, text: str, status: str, kind: PartKind = "text") -> dict[str, Any]:
    content = [part(kind, text)] if status != "in_progress" else []
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    # No summary: Chat Completions upstreams stream raw reasoning text only.
    content = [part("reasoning", text)] if status != "in_progress" else []
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def streamed_item(kind: PartKind, item_id: str, text: str, status: str) -> dict[str, Any]:
    """The item one part streams into: a reasoning item, or an assistant message."""
    if kind == "reasoning":
        return reasoning_item(item_id, text, status)
    return message_item(item_id, text, status, kind)


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def function_call_output_item(item_id: str, call_id: str, output: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call_output", "call_id": call_id, "output": output, "status": status}
