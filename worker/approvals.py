"""Tool calls that wait on a person: the approval request a turn ends with, and the answer a later turn brings.

An agent names the tools that need approval (`Agent.approval_required`). When the model calls one, the turn
does not run it: it ends `completed` with an `mcp_approval_request` item (OpenAI's shape; `server_label` is
the agent's name), and the request is recorded in Redis (keys.approval). A later turn whose input carries an
`mcp_approval_response` answers it: the tool runs, or the model is told it was denied, and the turn goes on.
Either way the turn's output holds an `mcp_call` item with the result (`output`) or why there is none
(`error`), and that item is what later prompts show the model as the call and its result.

At most once: whoever answers a request first takes its `claimed` field (HSETNX), so two turns answering it,
two workers running one turn, or a re-run after a worker died never run the tool twice. A re-run whose dead
attempt had finished the tool reuses its stored result; one that died while the tool ran does not run it
again and says so. A request left unanswered past TURNSTREAM_APPROVAL_TIMEOUT_S is refused, and the next turn
on the conversation states in its output that it expired. Whether an answer came in time is judged by when its
turn was accepted, not by when a worker got to it: a queue backlog or a worker restart does not turn an answer
given in time into a refusal.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import ids, keys
from shared.models import Item
from shared.redis_conn import text

# A request's record outlives its timeout by this much, so a late answer is told "expired", not "unknown".
_RECORD_MARGIN_S = 86_400


class Answer(enum.Enum):
    RUN = "run"  # this turn took the request: run the tool (or record the denial)
    DONE = "done"  # a dead attempt of this turn finished it: its stored result stands
    INTERRUPTED = "interrupted"  # a dead attempt of this turn was running it: it is not run again
    TAKEN = "taken"  # another turn answered it first
    EXPIRED = "expired"  # unanswered past the timeout (or its record is gone)


@dataclass(frozen=True)
class Request:
    request_id: str
    name: str
    arguments: str
    server_label: str


@dataclass(frozen=True)
class Claimed:
    answer: Answer
    request: Request | None  # None when the record is gone
    output: str | None = None
    error: str | None = None


class Approvals:
    def __init__(self, redis: Redis, timeout_s: int) -> None:
        self.redis = redis
        self.timeout_s = timeout_s

    async def ask(self, request: Request, *, project: str, response_id: str) -> None:
        """Records a request before it is streamed, so any turn that sees it can answer it."""
        key = keys.approval(request.request_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={
                "project": project, "response": response_id, "name": request.name, "arguments": request.arguments,
                "server_label": request.server_label, "created": int(time.time() * 1000),
            })  # fmt: skip
            pipe.expire(key, self.timeout_s + _RECORD_MARGIN_S)
            await pipe.execute()

    async def claim(self, request_id: str, response_id: str, answered_at_s: int) -> Claimed:
        """Takes the request for the turn `response_id`, accepted at `answered_at_s` (its `created_at`, whole
        seconds: an answer may be up to a second later than the timeout), unless someone already has (see
        Answer)."""
        key = keys.approval(request_id)
        fields = ["name", "arguments", "server_label", "created", "claimed", "output", "error"]
        name, arguments, label, created, claimed, output, error = await self.redis.hmget(key, fields)
        if name is None or created is None:
            return Claimed(Answer.EXPIRED, None)
        request = Request(request_id, text(name), text(arguments or b""), text(label or b""))
        if claimed is None:
            if int(created) + self.timeout_s * 1000 < answered_at_s * 1000:
                await self.redis.hsetnx(key, "claimed", f"expired:{response_id}")
                return Claimed(Answer.EXPIRED, request)
            if await self.redis.hsetnx(key, "claimed", response_id):
                return Claimed(Answer.RUN, request)
            claimed, output, error = await self.redis.hmget(key, ["claimed", "output", "error"])
        if text(claimed or b"") != response_id:
            return Claimed(Answer.TAKEN, request)
        if output is None and error is None:
            return Claimed(Answer.INTERRUPTED, request)
        return Claimed(Answer.DONE, request, text(output) if output else None, text(error) if error else None)

    async def settle(self, request_id: str, *, output: str | None, error: str | None) -> None:
        """Stores what answering the request produced, so a re-run reuses it instead of running the tool."""
        mapping = {"output": output} if error is None else {"error": error}
        await self.redis.hset(keys.approval(request_id), mapping=mapping)

    async def expired(self, request_id: str) -> bool:
        """Whether an unanswered request is past its timeout (or gone)."""
        created, claimed = await self.redis.hmget(keys.approval(request_id), ["created", "claimed"])
        if claimed is not None:
            return False  # answered: its run is in the history of the turn that answered it
        return created is None or int(created) + self.timeout_s * 1000 < time.time() * 1000


def request_item(request: Request) -> Item:
    return {
        "id": request.request_id,
        "type": "mcp_approval_request",
        "server_label": request.server_label,
        "name": request.name,
        "arguments": request.arguments,
    }


def run_item(request: Request, *, output: str | None, error: str | None) -> Item:
    return {
        "id": ids.new_id(ids.TOOL_RUN),
        "type": "mcp_call",
        "server_label": request.server_label,
        "name": request.name,
        "arguments": request.arguments,
        "approval_request_id": request.request_id,
        "output": output,
        # OpenAI's shape for a tool that did not produce a result: the reason is the error's content.
        "error": None if error is None else {"type": "mcp_tool_execution_error", "content": error},
        "status": "completed" if error is None else "failed",
    }


def pending_requests(items: list[Item]) -> list[Item]:
    """The approval requests in `items` that no tool run in them answers."""
    answered = {i.get("approval_request_id") for i in items if i.get("type") == "mcp_call"}
    return [i for i in items if i.get("type") == "mcp_approval_request" and i["id"] not in answered]


def answers(items: list[Item]) -> list[Item]:
    return [i for i in items if i.get("type") == "mcp_approval_response"]


def refusal(answer: Answer, timeout_s: int, reason: str | None = None) -> str:
    """Why a request's tool did not run, as the model and the history see it."""
    if answer is Answer.EXPIRED:
        return f"The approval request expired: it was not answered within {timeout_s} s; the tool was not run."
    if answer is Answer.TAKEN:
        return "The approval request was already answered by another turn; the tool was not run again."
    if answer is Answer.INTERRUPTED:
        return "The tool's approved run was interrupted (its worker stopped); it is not run a second time."
    return "The user denied this tool call" + (f": {reason}" if reason else ".")
