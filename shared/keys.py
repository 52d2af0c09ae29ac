"""Every Redis key the service uses, built in one place.

A gateway written in another language needs only this file and docs/stream-contract in the README.
Reading or writing these keys directly skips API keys and projects: it is infrastructure-level access.

On a Redis Cluster every key of a response or conversation carries its partition's hash tag (shared/partitions.py)
right before the id: `turnstream:events:{1a2b}resp_1a2b…`, the 4 digits after the id's prefix, so the id alone
names the key; keys of a partition as a whole (its queue, active index, webhook outbox) carry the tag at the
end; an API key's keys carry its id as their tag. On one Redis no name has a tag, as it always was.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

from shared import partitions

PREFIX = "turnstream:"

def partition(object_id: str) -> str:
    """The hash tag a conversation's or response's keys carry: `{` + the 4 hex digits after the id's prefix +
    `}` on a cluster, "" on one Redis. A turn of a conversation has its conversation's digits."""
    return "{" + partitions.digits_of(object_id) + "}" if partitions.enabled() else ""


def partition_tag(digits: str) -> str:
    """A partition's hash tag from its 4 digits (`partitions.all_tags()`), "" on one Redis."""
    return "{" + digits + "}" if digits else ""


def every_partition() -> list[str]:
    """The hash tag of every partition: [""] on one Redis."""
    return [partition_tag(digits) for digits in partitions.all_tags()]


def _own(object_id: str) -> str:
    """An id that is its own hash tag on a cluster (an API key's keys share one slot, away from any turn's)."""
    return "{" + object_id + "}" if partitions.enabled() else object_id


RESPONSE_PREFIX = f"{PREFIX}response:"


def response(response_id: str) -> str:
    """HASH: status, attempt, seq (last sequence number), batch (last event batch written), cancel,
    request (JSON), response (JSON) (each zlib-compressed unless it starts with "{": shared/stored_form.py),
    progress (the turn's `response.in_progress` event, encoded at accept for the worker to publish as it starts
    the turn; records of older API nodes lack it), deferred and waits (a wait on the queue for the upstream:
    shared/lua/defer_turn.lua); for a turn in a conversation: cancelled and cancelled_hook
    (its cancelled Response and webhook entry, rendered at accept for an `interrupt`/`rollback` accept that
    stops it before pickup; dropped once it starts), rollback (set by a `rollback` accept: its commit adds
    nothing to the conversation), feed and feed_seq (its conversation's feed and the feed's counter, when
    stored: see conversation_feed)."""
    return f"{RESPONSE_PREFIX}{partition(response_id)}{response_id}"


def active_turns(part: str = "") -> str:
    """ZSET: response id -> accept time (ms) of every turn of the partition `part` (a hash tag, or "" on one
    Redis) not yet finished. The sweeper walks it to find turns whose job was lost; the commit removes a turn."""
    return f"{PREFIX}active-turns{part}"

# STRING: held (with a short TTL) by the one worker currently sweeping.
SWEEPER_LOCK = f"{PREFIX}sweeper-lock"


EVENTS_PREFIX = f"{PREFIX}events:"


def events(response_id: str) -> str:
    """STREAM: the response's events; entry id is "<sequence_number>-1". Once the turn commits, usually one
    compact entry of them all, id that of the last (shared/stored_form.py)."""
    return f"{EVENTS_PREFIX}{partition(response_id)}{response_id}"


def events_scratch(response_id: str) -> str:
    """STREAM: exists only inside the commit script, which builds a finished turn's compact entry here and
    COPYs it over the turn's stream: a stream's first XADD reserves 4 KB, a copy only what it holds."""
    return f"{PREFIX}events-scratch:{partition(response_id)}{response_id}"


CONVERSATION_PREFIX = f"{PREFIX}conversation:"


def conversation(conversation_id: str) -> str:
    """STRING: the conversation object (JSON)."""
    return f"{CONVERSATION_PREFIX}{partition(conversation_id)}{conversation_id}"


def conversation_items(conversation_id: str) -> str:
    """LIST: conversation items (JSON), oldest first."""
    return f"{conversation(conversation_id)}:items"


def conversation_item_tokens(conversation_id: str) -> str:
    """HASH: item id -> its estimated prompt tokens, computed once when a turn first reads the item."""
    return f"{conversation(conversation_id)}:item-tokens"


def conversation_compaction(conversation_id: str) -> str:
    """STRING: {"index", "kept_from"}: the list index of the newest compaction item, and of the oldest item it
    kept verbatim; history sent upstream is that item, then the items from kept_from on."""
    return f"{conversation(conversation_id)}:compaction"


def project_conversations(project: str) -> str:
    """ZSET: conversation id -> created_at (ms) of one project's conversations, for listing them newest first.
    Written when a conversation is created and removed when it is deleted; an id whose conversation expired
    is dropped by the next listing that meets it."""
    return f"{PREFIX}project-conversations:{project}"


def conversation_feed(conversation_id: str) -> str:
    """STREAM: every event of every stored turn of the conversation, as written to each response's stream;
    entry id "<n>-1", n counting the feed's entries; fields seq (n), type, attempt, response_id, data (the
    event JSON with "response_id" spliced in). A turn's record names it in its `feed` field."""
    return f"{conversation(conversation_id)}:events"


def conversation_feed_counter(conversation_id: str) -> str:
    """STRING: the number of entries ever written to the conversation's feed (its next n); expires with it. A
    turn's record names it in its `feed_seq` field."""
    return f"{conversation(conversation_id)}:events-written"


TURNS_SUFFIX = ":turns"


def conversation_turns(conversation_id: str) -> str:
    """LIST: response ids of the conversation's unfinished turns, in arrival order; the head may run."""
    return f"{conversation(conversation_id)}{TURNS_SUFFIX}"


TURN_WAKE_PREFIX = f"{PREFIX}turn-wake:"


def turn_wake(response_id: str) -> str:
    """LIST: a token is pushed here when the turn reaches the head of its conversation's queue."""
    return f"{TURN_WAKE_PREFIX}{partition(response_id)}{response_id}"


# LIST: a token per enqueued turn, its partition's 4 digits ("1" on one Redis); idle workers BLPOP it instead of
# sleeping. On one Redis the enqueue pushes it; on a cluster the API does, after the accept (another slot).
QUEUE_WAKE = f"{PREFIX}queue-wake"


def queue(queue_name: str, part: str = "") -> str:
    """ZSET: arq's queue of one partition (`part` its hash tag; "" on one Redis, where there is one queue)."""
    return f"{queue_name}{part}"


def job_id(response_id: str) -> str:
    """A turn's arq job id: its response id, behind its partition's tag on a cluster (arq's job keys are the
    job id behind a prefix, so they land in the turn's slot)."""
    return f"{partition(response_id)}{response_id}"


def response_of_job(job: str) -> str:
    return job[job.find("}") + 1 :] if job.startswith("{") else job



def client_gone(response_id: str) -> str:
    """STRING: when (ms) the client of a cancel-on-disconnect stream left; any API node's resuming tail deletes
    it, and the node that saw the client leave cancels the turn if it is still there after the grace."""
    return f"{PREFIX}client-gone:{partition(response_id)}{response_id}"


def approval(request_id: str) -> str:
    """HASH: one tool call waiting on a person (worker/approvals.py): project, response (the turn that asked),
    name, arguments, created (ms); once answered, `claimed` (the answering turn's response id) and then
    `output` or `error`. HSETNX on `claimed` is what runs an approved tool at most once."""
    return f"{PREFIX}approval:{request_id}"


# PUB/SUB channel: response ids whose cancel was requested while running.
CANCEL_CHANNEL = f"{PREFIX}cancel"


def fanout_wake(node_id: str, part: str = "") -> str:
    """STREAM: an API process writes here to interrupt its own blocking XREAD (of the partition `part`'s
    streams) when a new stream is watched."""
    return f"{PREFIX}fanout-wake:{part}{node_id}"


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



# --- upstream model health (worker/upstreams.py, worker/upstream_retry.py) ----------------------


def upstream_failures(upstream: str) -> str:
    """STRING: recent failed calls to one upstream, fleet-wide; expires a window after the last one, and a
    retried call that it answers clears it."""
    return f"{PREFIX}upstream-failures:{upstream}"


def upstream_cooldown(upstream: str) -> str:
    """STRING: set (with a TTL of the cooldown) while the upstream is skipped by every worker's new turns."""
    return f"{PREFIX}upstream-cooldown:{upstream}"


def upstream_retry(response_id: str) -> str:
    """HASH: a turn's retry state across the waits it spends back on the queue: first_failure_ms, failures,
    upstream (index of the one in use), tried (what failed so far, for the final error)."""
    return f"{PREFIX}upstream-retry:{partition(response_id)}{response_id}"


# HASH: agent name -> AgentCard JSON, published by workers at start so any API node can list and validate models.
AGENTS = f"{PREFIX}agents"


# STRING: the number of partitions the data was written with (on a cluster; shared/redis_conn.py checks it).
PARTITIONS = f"{PREFIX}partitions"

# ZSET: worker id -> its last heartbeat (ms, the worker's clock); the ids of workers that may be alive.
WORKERS = f"{PREFIX}workers"

WORKER_PREFIX = f"{PREFIX}worker:"


def worker(worker_id: str) -> str:
    """STRING: one worker's heartbeat (JSON: id, host, pid, queue, running, started_at, beat_at), expiring
    TURNSTREAM_WORKER_HEARTBEAT_TTL_S after its last refresh, so a dead worker's record goes by itself."""
    return f"{WORKER_PREFIX}{worker_id}"


# --- API keys, projects and limits (shared/api_keys.py, shared/rate_limits.py) -------------------

# HASH: sha256(secret) hex -> key id. The only place a secret is looked up by; the secret itself is never stored.
API_KEY_DIGESTS = f"{PREFIX}apikeys"

API_KEY_PREFIX = f"{PREFIX}apikey:"


def api_key(key_id: str) -> str:
    """HASH: id, digest, project, name, rpm, max_concurrent, created, last_used, requests, seeded."""
    return f"{API_KEY_PREFIX}{_own(key_id)}"


RPM_SUFFIX = ":rpm"
INFLIGHT_SUFFIX = ":inflight"


def api_key_rpm(key_id: str) -> str:
    """ZSET: one member per request of the last 60 s, scored by Redis' clock in ms (a sliding-window log)."""
    return f"{API_KEY_PREFIX}{_own(key_id)}{RPM_SUFFIX}"


def api_key_inflight(key_id: str) -> str:
    """ZSET: response ids of the key's queued and running turns, scored by admission time in ms."""
    return f"{API_KEY_PREFIX}{_own(key_id)}{INFLIGHT_SUFFIX}"


def project_usage(project: str, part: str = "") -> str:
    """HASH: "<day>:input_tokens", "<day>:output_tokens", "<day>:turns", day = UTC days since 1970-01-01; one
    per partition on a cluster (written by the partition's commits, summed when read)."""
    return f"{PREFIX}usage:{part}{project}"


def idempotency(project: str, scope: str, key_digest: str, part: str = "") -> str:
    """STRING: JSON {fingerprint, id, state, at} of a create sent with an Idempotency-Key; kept 24 h. On a
    cluster it is in the partition of the turn it creates (the accept checks it)."""
    return f"{PREFIX}idempotency:{part}{project}:{scope}:{key_digest}"


def agui_run(project: str, run_digest: str) -> str:
    """STRING: the response id of an AG-UI run, by its project and the sha256 of the client's own runId (any
    string, so it is hashed, never part of a key as it is); kept as long as the response."""
    return f"{PREFIX}agui-run:{project}:{run_digest}"


def webhook_endpoints(project: str) -> str:
    """HASH: endpoint id -> endpoint JSON (url, events, secret) of one project's webhooks."""
    return f"{PREFIX}webhooks:{project}"


def webhook_outbox(part: str = "") -> str:
    """LIST: one entry (JSON) per finished turn of the partition whose project has webhooks, pushed by the
    commit script itself, newest first. Workers expand each entry into one delivery per subscribed endpoint."""
    return f"{PREFIX}webhook-outbox{part}"


def webhook_due(part: str = "") -> str:
    """ZSET: delivery id -> when it is next due (ms), of the partition's deliveries. A worker claiming a
    delivery moves it into the future by a lease, so a worker that dies mid-delivery leaves it to be retried
    once the lease lapses."""
    return f"{PREFIX}webhook-due{part}"


def webhook_delivery(delivery_id: str, part: str = "") -> str:
    """HASH: one pending delivery: endpoint, project, webhook id, body, attempts, first attempt time."""
    return f"{PREFIX}webhook-delivery:{part}{delivery_id}"


# LIST: deliveries that ran out of retries (JSON), newest first, capped at TURNSTREAM_WEBHOOK_DEAD_LETTER_MAX.
WEBHOOK_DEAD = f"{PREFIX}webhook-dead"
