"""Where a turn's keys live on a Redis Cluster, told by its ids alone.

A cluster keeps each key in one of 16384 slots, chosen by the CRC16 of the key's hash tag (the text between its
first `{` and the next `}`), and a script may touch the keys of one slot only. Every script of a turn touches
its record, its stream, its conversation, its queue and its job together, so all of them carry one tag: a
*partition*. There are a fixed number of partitions (TURNSTREAM_PARTITIONS, a power of two); each has a queue,
a running set, an active-turn index and a webhook outbox of its own, and a worker claims from all of them.

The partition is written into the ids: a conversation's id, and the id of a turn on its own, start (after
`conv_` / `resp_`) with the 4 hex digits of a partition's tag, and every turn of a conversation takes its
conversation's digits. So a response id or a conversation id alone tells any node, gateway or CLI which keys
are its (`shared/keys.py`): the tag is `{` + those 4 digits + `}`.

The partitions' tags are picked so that their slots are evenly spaced over the 16384: however a cluster's
primaries split the slots into ranges, each primary holds a share of partitions proportional to its share of
slots, and so of the turns.
"""

from __future__ import annotations

import binascii
import itertools
import secrets
from functools import lru_cache

SLOTS = 16384
TAG_DIGITS = 4  # hex digits of an id that name its partition


def slot(tag: str) -> int:
    """The cluster slot of a hash tag (CRC16-XMODEM, as Redis computes it)."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


@lru_cache
def tags(count: int) -> tuple[str, ...]:
    """The `count` partitions' tags (4 hex digits each): for partition i, the tag whose slot is nearest at
    or after i * SLOTS / count, so the partitions' slots are spaced evenly."""
    if count < 1 or count & (count - 1) or count > 1024:
        raise ValueError(f"the number of partitions must be a power of two from 1 to 1024, not {count}")
    first_tag_at: dict[int, str] = {}
    for n in range(16**TAG_DIGITS):
        tag = f"{n:04x}"
        first_tag_at.setdefault(slot(tag), tag)
    chosen = []
    for i in range(count):
        at = i * SLOTS // count
        while at not in first_tag_at:
            at = (at + 1) % SLOTS
        chosen.append(first_tag_at[at])
    return tuple(chosen)


# The process's partitions: None on one Redis (keys carry no hash tag), else their tags. Set once per process
# from its Redis (shared/redis_conn.py), before any key is named.
_tags: tuple[str, ...] | None = None


def configure(count: int | None) -> None:
    """`count` partitions on a cluster; None on one Redis."""
    global _tags
    _tags = None if count is None else tags(count)


def enabled() -> bool:
    return _tags is not None


def all_tags() -> tuple[str, ...]:
    """Every partition's 4 digits; one "" on one Redis (one queue, one index, no tags)."""
    return _tags if _tags is not None else ("",)


def digits_of(object_id: str) -> str:
    """The 4 hex digits of a response or conversation id that name its partition."""
    start = object_id.find("_") + 1
    return object_id[start : start + TAG_DIGITS]


# Where the next unseeded new id goes: each partition in turn, from a random start per process, so every partition
# gets the same share. Picked at random, 500 conversations put 187 ± 11 (one sd) on a primary holding 6 of 16
# partitions, and over twelve runs of the bench's balance load the busiest primary's keys were 4-28% above the
# mean (the target is 25%), against the 12.5% that 6 of 16 partitions make.
_next_pick = itertools.count(secrets.randbelow(1024))


def for_new(conversation_id: str | None = None, seed: str | None = None) -> str:
    """The partition digits a new id starts with: its conversation's; else the one `seed` (hex, e.g. an
    Idempotency-Key's digest, so a retry finds the same partition) picks; else the next partition in turn.
    "" on one Redis."""
    if _tags is None:
        return ""
    if conversation_id:
        return digits_of(conversation_id)
    pick = int(seed[:8], 16) if seed else next(_next_pick)
    return _tags[pick % len(_tags)]
