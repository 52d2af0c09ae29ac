"""How a finished turn is kept in Redis: compressed JSON values, and its event stream as one entry.

A finished turn is read far more rarely than it is kept (30 days for its record, a day for its stream),
and in the form it was streamed in most of its bytes repeat: each lifecycle event carries the whole
Response, and every delta entry its item id and field names. Kept compressed, a short turn takes about a
third of the memory and a 200-word streamed turn about a fifth (tests/benchmarks/memory_per_turn.py).

Both forms are plain standard formats, so a gateway in any language decodes them with its standard library
(README, "The Redis stream contract"):
- A JSON value (the response hash's `request` and `response`) whose first byte is `{` is the JSON itself;
  any other is the JSON compressed with zlib (RFC 1950; Node `zlib.inflateSync`, Go `compress/zlib`).
- A compact stream entry has the fields `seq` (the sequence number of the last event it holds, which is
  also its entry id `<seq>-1`) and `events`: zlib-compressed JSON, an array of every event of the turn in
  order, each `{"seq", "type", "attempt", "data"}`, the same four fields a plain entry has.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import orjson

from shared.events import StreamEvent, decode_entry

# zlib's default level, except for a large stream: level 1 compresses a 200-word turn's 43 KB of events 10%
# less tightly at a fifth of the CPU (~0.1 ms instead of ~0.55 ms here). A short turn's few KB take ~0.1 ms
# at the default level, which packs them ~12% tighter, and short turns are most of what is stored.
_LEVEL = 6
_LARGE_LEVEL = 1
_LARGE = 16_384
COMPACT_FIELD = "events"  # the field that marks a compact stream entry
_COMPACT_KEYS = (COMPACT_FIELD.encode(), COMPACT_FIELD)


def pack_json(text: str) -> bytes:
    return zlib.compress(text.encode(), _LEVEL)


def unpack_json(value: bytes | str) -> str:
    """The JSON text of a stored value, compressed or not."""
    if isinstance(value, str):
        return value
    if value[:1] in (b"{", b""):
        return value.decode()
    return zlib.decompress(value).decode()


def pack_events(stream: Iterable[StreamEvent]) -> bytes:
    entries = [{"seq": e.seq, "type": e.type, "attempt": e.attempt, "data": e.data} for e in stream]
    raw = orjson.dumps(entries)
    return zlib.compress(raw, _LARGE_LEVEL if len(raw) > _LARGE else _LEVEL)


def unpack_events(blob: bytes) -> list[StreamEvent]:
    return [
        StreamEvent(seq=int(e["seq"]), type=e["type"], attempt=int(e["attempt"]), data=e["data"])
        for e in orjson.loads(zlib.decompress(blob))
    ]


def decode_entries(fields: dict[bytes, bytes] | dict[str, str], after_seq: int = -1) -> list[StreamEvent]:
    """The events of one stream entry numbered after `after_seq`: a plain entry's one event, or those of a
    compact entry (which holds the whole turn, so a reader resuming mid-stream finds its place in it)."""
    blob = next((fields[k] for k in _COMPACT_KEYS if k in fields), None)  # type: ignore[index]
    if blob is None:
        event = decode_entry(fields)
        return [event] if event.seq > after_seq else []
    raw = blob if isinstance(blob, bytes) else blob.encode()  # a client decoding replies has it as text
    return [event for event in unpack_events(raw) if event.seq > after_seq]
