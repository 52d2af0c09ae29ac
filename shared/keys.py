"""Every Redis key the service uses, built in one place.

A gateway written in another language needs only this file and docs/stream-contract in the README.
Reading or writing these keys directly skips API keys and projects: it is infrastructure-level access.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

PREFIX = "turnstream:"


RESPONSE_PREFIX = f"{PREFIX}response:"


def response(response_id: str) -> str:
    """HASH: status, attempt, seq (last sequence number), batch (last event batch written), cancel,
    request (JSON), response (JSON) (each zlib-compressed unless it starts with "{": shared/stored_form.py),
    progress (the turn's `response.in_progress` event, encoded at accept for the worker to publish as it starts
    the turn; records of older API nodes lack it)."""
    return f"{RESPONSE_PREFIX}{response_id}"


# ZSET: response id -> accept time (ms) of every turn not yet finished. The sweeper walks it to find turns
# whose job was lost; the commit script removes a turn from it.
ACTIVE_TURNS = f"{PREFIX}active-turns"

# STRING: held (with a short TTL) by the one worker currently sweeping.
SWEEPER_LOCK = f"{PREFIX}sweeper-lock"


def events(response_id: str) -> str:
    """STREAM: the response's events; entry id is "<sequence_number>-1". Once the turn commits, usually one
    compact entry of them all, id that of the last (shared/stored_form.py)."""
    return f"{PREFIX}events:{response_id}"


def events_scratch(response_id: str) -> str:
    """STREAM: exists only inside the commit script, which builds a finished turn's compact entry here and
    COPYs it over the turn's stream: a stream's first XADD reserves 4 KB, a copy only what it holds."""
    return f"{PREFIX}events-scratch:{response_id}"


CONVERSATION_PREFIX = f"{PREFIX}conversation:"


def conversation(conversation_id: str) -> str:
    """STRING: the conversation object (JSON)."""
    return f"{CONVERSATION_PREFIX}{conversation_id}"


def conversation_items(conversation_id: str) -> str:
    """LIST: conversation items (JSON), oldest first."""
    return f"{CONVERSATION_PREFIX}{conversation_id}:items"


def conversation_item_tokens(conversation_id: str) -> str:
    """HASH: item id -> its estimated prompt tokens, computed once when a turn first reads the item."""
    return f"{CONVERSATION_PREFIX}{conversation_id}:item-tokens"


def conversation_compaction(conversation_id: str) -> str:
    """STRING: {"index", "kept_from"}: the list index of the newest compaction item, and of the oldest item it
    kept verbatim; history sent upstream is that item, then the items from kept_from on."""
    return f"{CONVERSATION_PREFIX}{conversation_id}:compaction"


TURNS_SUFFIX = ":turns"


def conversation_turns(conversation_id: str) -> str:
    """LIST: response ids of the conversation's unfinished turns, in arrival order; the head may run."""
    return f"{CONVERSATION_PREFIX}{conversation_id}{TURNS_SUFFIX}"


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


def running_jobs(queue_name: str) -> str:
    """ZSET: job id -> lease expiry (ms) of every claimed job; the queue itself holds only waiting jobs."""
    return f"{queue_name}:running"


def worker_health(queue_name: str, hostname: str) -> str:
    """STRING: one worker's arq heartbeat, per host so `turnstream worker --check` checks this pod only."""
    return f"{queue_name}:health-check:{hostname}"


def arq_in_progress(job_id: str) -> str:
    """arq's own in-progress marker; a running turn renews it as its lease."""
    return f"{in_progress_key_prefix}{job_id}"


def arq_job(job_id: str) -> str:
    """arq's job record; gone once arq considers the job finished (or failed)."""
    return f"{job_key_prefix}{job_id}"


def arq_result(job_id: str) -> str:
    """arq's job result; while it exists arq refuses to enqueue the same job id again."""
    return f"{result_key_prefix}{job_id}"


def arq_retry(job_id: str) -> str:
    """arq's run counter for a job; arq gives up on a job past its max_tries."""
    return f"{retry_key_prefix}{job_id}"



# HASH: agent name -> AgentCard JSON, published by workers at start so any API node can list and validate models.
AGENTS = f"{PREFIX}agents"


# --- API keys, projects and limits (shared/api_keys.py, shared/rate_limits.py) -------------------

# HASH: sha256(secret) hex -> key id. The only place a secret is looked up by; the secret itself is never stored.
API_KEY_DIGESTS = f"{PREFIX}apikeys"

API_KEY_PREFIX = f"{PREFIX}apikey:"


def api_key(key_id: str) -> str:
    """HASH: id, digest, project, name, rpm, max_concurrent, created, last_used, requests, seeded."""
    return f"{API_KEY_PREFIX}{key_id}"


RPM_SUFFIX = ":rpm"
INFLIGHT_SUFFIX = ":inflight"


def api_key_rpm(key_id: str) -> str:
    """ZSET: one member per request of the last 60 s, scored by Redis' clock in ms (a sliding-window log)."""
    return f"{API_KEY_PREFIX}{key_id}{RPM_SUFFIX}"


def api_key_inflight(key_id: str) -> str:
    """ZSET: response ids of the key's queued and running turns, scored by admission time in ms."""
    return f"{API_KEY_PREFIX}{key_id}{INFLIGHT_SUFFIX}"


def project_usage(project: str) -> str:
    """HASH: "<day>:input_tokens", "<day>:output_tokens", "<day>:turns", day = UTC days since 1970-01-01."""
    return f"{PREFIX}usage:{project}"


def idempotency(project: str, scope: str, key_digest: str) -> str:
    """STRING: JSON {fingerprint, id, state, at} of a create sent with an Idempotency-Key; kept 24 h."""
    return f"{PREFIX}idempotency:{project}:{scope}:{key_digest}"


def webhook_endpoints(project: str) -> str:
    """HASH: endpoint id -> endpoint JSON (url, events, secret) of one project's webhooks."""
    return f"{PREFIX}webhooks:{project}"


# LIST: one entry (JSON) per finished turn whose project has webhooks, pushed by the commit script itself,
# newest first. Workers expand each entry into one delivery per subscribed endpoint.
WEBHOOK_OUTBOX = f"{PREFIX}webhook-outbox"

# ZSET: delivery id -> when it is next due (ms). A worker claiming a delivery moves it into the future by a
# lease, so a worker that dies mid-delivery leaves it to be retried once the lease lapses.
WEBHOOK_DUE = f"{PREFIX}webhook-due"


def webhook_delivery(delivery_id: str) -> str:
    """HASH: one pending delivery: endpoint, project, webhook id, body, attempts, first attempt time."""
    return f"{PREFIX}webhook-delivery:{delivery_id}"


# LIST: deliveries that ran out of retries (JSON), newest first, capped at TURNSTREAM_WEBHOOK_DEAD_LETTER_MAX.
WEBHOOK_DEAD = f"{PREFIX}webhook-dead"
