"""Every Redis key the service uses, built in one place.

A gateway written in another language needs only this file and docs/stream-contract in the README.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix

PREFIX = "turnstream:"


def response(response_id: str) -> str:
    """HASH: status, attempt, seq (last sequence number), cancel, request (JSON), response (JSON)."""
    return f"{PREFIX}response:{response_id}"


def events(response_id: str) -> str:
    """STREAM: the response's events; entry id is "<sequence_number>-1"."""
    return f"{PREFIX}events:{response_id}"


def conversation(conversation_id: str) -> str:
    """STRING: the conversation object (JSON)."""
    return f"{PREFIX}conversation:{conversation_id}"


def conversation_items(conversation_id: str) -> str:
    """LIST: conversation items (JSON), oldest first."""
    return f"{PREFIX}conversation:{conversation_id}:items"


def conversation_item_tokens(conversation_id: str) -> str:
    """HASH: item id -> its estimated prompt tokens, computed once when a turn first reads the item."""
    return f"{PREFIX}conversation:{conversation_id}:item-tokens"


def conversation_compaction(conversation_id: str) -> str:
    """STRING: {"index", "kept_from"}: the list index of the newest compaction item, and of the oldest item it
    kept verbatim; history sent upstream is that item, then the items from kept_from on."""
    return f"{PREFIX}conversation:{conversation_id}:compaction"


def conversation_turns(conversation_id: str) -> str:
    """LIST: response ids of the conversation's unfinished turns, in arrival order; the head may run."""
    return f"{PREFIX}conversation:{conversation_id}:turns"


TURN_WAKE_PREFIX = f"{PREFIX}turn-wake:"


def turn_wake(response_id: str) -> str:
    """LIST: a token is pushed here when the turn reaches the head of its conversation's queue."""
    return f"{TURN_WAKE_PREFIX}{response_id}"


# LIST: the API pushes a token per enqueued turn; idle workers BLPOP it instead of sleeping.
QUEUE_WAKE = f"{PREFIX}queue-wake"

# PUB/SUB channel: response ids whose cancel was requested while running.
CANCEL_CHANNEL = f"{PREFIX}cancel"


def fanout_wake(node_id: str) -> str:
    """STREAM: an API process writes here to interrupt its own blocking XREAD when a new stream is watched."""
    return f"{PREFIX}fanout-wake:{node_id}"


def worker_health(queue_name: str, hostname: str) -> str:
    """STRING: one worker's arq heartbeat, per host so `turnstream worker --check` checks this pod only."""
    return f"{queue_name}:health-check:{hostname}"


def arq_in_progress(job_id: str) -> str:
    """arq's own in-progress marker; a running turn renews it as its lease."""
    return f"{in_progress_key_prefix}{job_id}"


# HASH: agent name -> AgentCard JSON, published by workers at start so any API node can list and validate models.
AGENTS = f"{PREFIX}agents"
