"""Every Lua script of the service, loaded from the `.lua` files beside this module and registered once per client.

Each script file starts by naming its KEYS and ARGV as locals, so its body reads as names, never `ARGV[14]`.
The loader puts two things in front of every script: the constants below (made from the one Python source of
each: statuses, key prefixes) and `lib.lua`, the functions scripts share. A script's text is therefore the
same on every node and its SHA stable across restarts of the service.

Keys: every key a script is given comes in KEYS, so a client (and, on a cluster, the router) knows where it
runs. The one kind of key a script names itself is a key named by a member of a key it was given: the record
(and event stream) of a turn queued in a conversation's turn list, the in-progress marker of a job claimed from
a queue, the wake list of the next turn, and the conversation feed a turn's record names in its fields (see
`feed_of` in lib.lua). Those are found only inside the script, atomically with the member that names them,
and are in the slot of the keys it was given: on a cluster a member is named with its hash tag (`tagged` in
lib.lua), and a record's feed is its conversation's, in the same partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import PipelineCommand
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import events, keys, metrics, partitions
from shared.models import DEFAULT_PROJECT, TERMINAL_STATUSES, Status
from shared.redis_conn import UNAVAILABLE
from shared.settings import Settings

log = logging.getLogger(__name__)


def _constants() -> str:
    terminal = ",".join(f"['{status}']=true" for status in sorted(TERMINAL_STATUSES))
    return (
        f"local TERMINAL = {{{terminal}}}\n"
        f"local RESPONSE_PREFIX = '{keys.RESPONSE_PREFIX}'\n"
        f"local TURN_WAKE_PREFIX = '{keys.TURN_WAKE_PREFIX}'\n"
        f"local EVENTS_PREFIX = '{keys.EVENTS_PREFIX}'\n"
        f"local CANCEL_CHANNEL = '{keys.CANCEL_CHANNEL}'\n"
        f"local CANCELLED_EVENT = '{events.TERMINAL_TYPE_FOR_STATUS[Status.CANCELLED]}'\n"
        f"local DEFAULT_PROJECT = '{DEFAULT_PROJECT}'\n"
        f"local HASH_TAGS = {'true' if partitions.enabled() else 'false'}\n"
    )


def source(name: str) -> str:
    """The full text of one script as Redis runs it: constants, shared functions, then the script."""
    folder = resources.files(__package__)
    return _constants() + folder.joinpath("lib.lua").read_text() + folder.joinpath(f"{name}.lua").read_text()


@dataclass(frozen=True)
class Scripts:
    """One registered script per `.lua` file; called as `script(keys=[...], args=[...])`."""

    accept_turn: AsyncScript
    start_turn: AsyncScript
    defer_turn: AsyncScript
    append_events: AsyncScript
    finish_turn: AsyncScript
    enqueue_job: AsyncScript
    claim_jobs: AsyncScript
    renew_lease: AsyncScript
    end_job: AsyncScript
    sweep_active_turns: AsyncScript
    authorize_key: AsyncScript
    claim_idempotency_key: AsyncScript
    abandon_idempotency_key: AsyncScript
    expand_webhook: AsyncScript
    claim_webhooks: AsyncScript
    take_key_slot: AsyncScript
    create_conversation: AsyncScript


_registered: weakref.WeakKeyDictionary[Any, Scripts] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Durability:
    """How many replicas must have a write before the service answers for it (TURNSTREAM_REDIS_WAIT_REPLICAS).

    Redis replicates asynchronously: a write the primary acknowledged can be lost if it dies before a
    replica has it and the replica is promoted. WAIT narrows that window for the writes that matter most —
    a turn's accept (the client is told its turn exists) and its commit (its answer is final) — at the cost
    of a replica round trip each. It is not strong consistency: a WAIT that times out is counted and logged,
    and the answer still goes out, since the write itself succeeded on the primary.
    """

    replicas: int = 0
    timeout_ms: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> Durability:
        return cls(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)


NO_WAIT = Durability()


async def call(
    redis: Redis, script: AsyncScript, keys: list[Any], args: list[Any], durability: Durability = NO_WAIT
) -> Any:
    """Runs `script`; with `durability.replicas`, then WAITs for them on the same connection (a WAIT covers the
    writes of the connection it is sent on; sent through the pool on its own it would prove nothing)."""
    if durability.replicas <= 0:
        return await script(keys=keys, args=args)
    for _ in range(2):
        if isinstance(redis, RedisCluster):
            reply, acknowledged = await _on_node(redis, script, keys, args, durability)
        else:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", durability.replicas, durability.timeout_ms)
                reply, acknowledged = await pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError):
            await redis.script_load(script.script)  # a restarted Redis forgot it; nothing was written
            continue
        if isinstance(reply, Exception):
            raise reply
        failed = isinstance(acknowledged, Exception)
        if failed or int(acknowledged) < durability.replicas:
            metrics.REDIS_WAIT_SHORT.inc()
            log.warning(
                "a write's WAIT for %d replicas within %d ms (TURNSTREAM_REDIS_WAIT_REPLICAS) got %s",
                durability.replicas, durability.timeout_ms,
                f"no answer ({acknowledged})" if failed else f"{acknowledged} of them",
            )
        return reply
    raise NoScriptError("the script could not be loaded")


# How long a script whose node went away waits for its slot to be served again (a replica's promotion takes the
# nodes' timeout and an election) before the error is its caller's.
_FAILOVER_WAIT_S = 30.0
_DROPPED = (RedisConnectionError, RedisTimeoutError, OSError)


async def _where_served(script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
    """The script run through the cluster client, which finds the slot's owner, waiting out a failover."""
    delay, deadline = 0.1, time.monotonic() + _FAILOVER_WAIT_S
    while True:
        try:
            return await script(keys=keys, args=args)
        except UNAVAILABLE:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def _on_node(
    cluster: RedisCluster, script: AsyncScript, keys: list[Any], args: list[Any], durability: Durability
) -> tuple[Any, Any]:
    """EVALSHA then WAIT on one connection to the node that owns the keys' slot (a WAIT sent through the
    cluster client goes to some node, and proves nothing). While the slot moves (a failover, resharding) the
    node answers MOVED or is gone: the script then runs through the cluster client, which finds the owner,
    and the write counts as not acknowledged. So it does when the node went away after running the script but
    before its replica confirmed the write, which the node may have taken with it: the scripts run here are
    safe to run again (an accept answers for the turn it stored, a commit already made is refused), and run
    where the slot is served now, the write is surely there."""
    if not cluster.get_nodes():
        await cluster.initialize()
    node = cluster.get_node_from_key(keys[0])
    if node is None:  # the slot has no known owner right now
        return await _where_served(script, keys, args), 0
    commands = [
        PipelineCommand(0, "EVALSHA", script.sha, len(keys), *keys, *args),
        PipelineCommand(1, "WAIT", durability.replicas, durability.timeout_ms),
    ]
    try:
        await node.execute_pipeline(commands)
    except _DROPPED as exc:
        commands[0].result = commands[1].result = exc
    reply, acknowledged = commands[0].result, commands[1].result
    if isinstance(reply, NoScriptError):  # nothing ran: the caller loads the script and calls again
        return reply, acknowledged
    if isinstance(reply, Exception) or isinstance(acknowledged, _DROPPED):
        why = reply if isinstance(reply, Exception) else acknowledged  # what the caller logs
        return await _where_served(script, keys, args), why
    return reply, acknowledged


def scripts(redis: Redis) -> Scripts:
    """The scripts registered on this client; registered on first use (redis-py loads each on its first call,
    and again after a restarted Redis forgot it)."""
    found = _registered.get(redis)
    if found is None:
        found = Scripts(**{f.name: redis.register_script(source(f.name)) for f in fields(Scripts)})
        _registered[redis] = found
    return found
