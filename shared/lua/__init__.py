"""Every Lua script of the service, loaded from the `.lua` files beside this module and registered once per client.

Each script file starts by naming its KEYS and ARGV as locals, so its body reads as names, never `ARGV[14]`.
The loader puts two things in front of every script: the constants below (made from the one Python source of
each: statuses, key prefixes) and `lib.lua`, the functions scripts share. A script's text is therefore the
same on every node and its SHA stable across restarts of the service.

Keys: every key a script is given comes in KEYS, so a client (and, on a cluster, the router) knows where it
runs. The one kind of key a script names itself is a key named by a member of a key it was given: the record
(and event stream) of a turn queued in a conversation's turn list, the in-progress marker of a job claimed from
a queue, the wake list of the next turn, and the keys a turn's record names in its fields (its API key's
in-flight set, its project's usage, its conversation's feed). Those are found only inside the script,
atomically with the member that names them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared import events, keys
from shared.models import DEFAULT_PROJECT, TERMINAL_STATUSES, Status


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
    append_events: AsyncScript
    finish_turn: AsyncScript
    enqueue_job: AsyncScript
    claim_jobs: AsyncScript
    renew_lease: AsyncScript
    end_job: AsyncScript
    sweep_active_turns: AsyncScript
    authorize_key: AsyncScript
    seed_key: AsyncScript
    claim_idempotency_key: AsyncScript
    abandon_idempotency_key: AsyncScript
    expand_webhook: AsyncScript
    claim_webhooks: AsyncScript


_registered: weakref.WeakKeyDictionary[Any, Scripts] = weakref.WeakKeyDictionary()


def scripts(redis: Redis) -> Scripts:
    """The scripts registered on this client; registered on first use (redis-py loads each on its first call,
    and again after a restarted Redis forgot it)."""
    found = _registered.get(redis)
    if found is None:
        found = Scripts(**{f.name: redis.register_script(source(f.name)) for f in fields(Scripts)})
        _registered[redis] = found
    return found
