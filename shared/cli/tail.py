"""`turnstream tail`: print a response's events as they come, from any point, until its terminal event.

Straight from Redis when TURNSTREAM_REDIS_URL is set (what an operator on the fleet's network uses), or
through the API's SSE (what any client sees): with --url, or by default next to `turnstream dev`.
Redis stores each event's attempt; SSE does not carry it, so there
a re-run is recognised by a further `response.in_progress`, the first event of every attempt.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import openai
from openai import AsyncOpenAI, omit
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import response_record
from shared.cli.chat import API_KEY, api_base_url, describe_api_error
from shared.events import CREATED, IN_PROGRESS, QUEUED, TERMINAL_TYPES
from shared.models import TERMINAL_STATUSES
from shared.redis_conn import connect
from shared.settings import Settings
from shared.stream_tail import tail

_MAX_SUMMARY = 100


async def run_tail(
    settings: Settings,
    response_id: str,
    after: int,
    url: str | None,
    *,
    out: TextIO | None = None,
    redis: Redis | None = None,
) -> None:
    """`redis` replaces the connection made from settings (the embedded dev server, tests); it is not closed."""
    printer = _Printer(sys.stdout if out is None else out)
    after = max(after, -1)
    if url is None and redis is None and settings.redis_url is None:
        # Next to `turnstream dev` there is no Redis to reach, but its API serves the same events.
        url = f"http://{settings.host}:{settings.port}/v1"
    if url is not None:
        key = settings.api_key.get_secret_value() if settings.api_key is not None else API_KEY
        await _tail_api(url, key, response_id, after, printer)
    else:
        await _tail_redis(settings, redis, response_id, after, printer)


def _fail(message: str, code: int = 1) -> SystemExit:
    print(f"turnstream tail: {message}", file=sys.stderr, flush=True)
    return SystemExit(code)


async def _tail_redis(
    settings: Settings, redis: Redis | None, response_id: str, after: int, printer: _Printer
) -> None:
    own = redis is None
    fix = "check TURNSTREAM_REDIS_URL, or read through an API with --url"
    if redis is None:
        try:
            redis = await connect(settings)
        except (RedisError, OSError) as exc:  # asking whether it is a cluster, when it cannot answer
            raise _fail(f"cannot read Redis ({exc}); {fix}") from exc
    try:
        # tail() would otherwise wait forever on a stream that will never be written.
        if not await response_record.has_stream_or_record(redis, response_id):
            raise _fail(f"no response {response_id} (unknown, deleted, or expired)")
        ending = await response_record.ending(redis, response_id)
        if ending.status is not None and after > ending.last_seq:
            raise _fail(f"--after {after} is past the last event of {response_id} ({ending.last_seq})", 2)
        if ending.status is not None and ending.status.terminal and after == ending.last_seq:
            _nothing_after(response_id, after, ending.status.value)
            return
        async for event in tail(redis, response_id, after):
            printer.show(event.seq, event.type, event.attempt, event.json())
    except RedisError as exc:
        last = printer.last_seq
        if last is None:
            raise _fail(f"cannot read Redis ({exc}); {fix}") from exc
        raise _fail(f"Redis error after event {last}: {exc}; resume with --after {last}") from exc
    finally:
        if own:
            await redis.aclose()


async def _tail_api(url: str, api_key: str, response_id: str, after: int, printer: _Printer) -> None:
    attempts = _AttemptCounter(known=after < 0)
    async with AsyncOpenAI(base_url=api_base_url(url), api_key=api_key) as client:
        try:
            stream = await client.responses.retrieve(
                response_id, stream=True, starting_after=after if after >= 0 else omit
            )
            async with stream:
                async for event in stream:
                    data: dict[str, Any] = event.to_dict()
                    printer.show(event.sequence_number, event.type, attempts.see(event.type), data)
                    if event.type in TERMINAL_TYPES:
                        return
            if printer.last_seq is None and after >= 0:
                # Nothing came after --after: fine if the response had already ended there.
                response = await client.responses.retrieve(response_id)
                if response.status in TERMINAL_STATUSES:
                    _nothing_after(response_id, after, str(response.status))
                    return
        except openai.APIConnectionError as exc:
            if printer.last_seq is not None:
                raise _fail(f"lost the API at {url}; resume with --after {printer.last_seq}") from exc
            raise _fail(
                f"cannot reach the API at {url} (is `turnstream dev` running?); pass --url, "
                "or set TURNSTREAM_REDIS_URL to read the fleet's Redis directly"
            ) from exc
        except openai.APIError as exc:
            resume = f"; resume with --after {printer.last_seq}" if printer.last_seq is not None else ""
            raise _fail(f"{describe_api_error(exc)}{resume}") from exc
    last = printer.last_seq if printer.last_seq is not None else after
    raise _fail(f"the stream ended before a terminal event; resume with --after {last}")


def _nothing_after(response_id: str, after: int, status: str) -> None:
    print(f"turnstream tail: {response_id} ended ({status}) at event {after}; nothing follows it", file=sys.stderr)


class _AttemptCounter:
    """Infers attempt numbers from SSE, which does not carry them: each attempt opens with `in_progress`.

    The count is exact only when the replay began at the start of the stream; otherwise it is unknown
    (None), and the printer still recognises a re-run by a further `in_progress`.
    """

    def __init__(self, known: bool) -> None:
        self.attempt: int | None = 0 if known else None

    def see(self, event_type: str) -> int | None:
        if event_type == IN_PROGRESS and self.attempt is not None:
            self.attempt += 1
        return self.attempt


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last_seq: int | None = None
        self.highest_attempt: int | None = None
        self.attempt_events = False
        self.tool_names: dict[str, str] = {}  # call_id -> name: an output item names only its call

    def show(self, seq: int, event_type: str, attempt: int | None, data: dict[str, Any]) -> None:
        self._mark_rerun(event_type, attempt)
        tag = f" [attempt {attempt}]" if attempt is not None else ""
        item = data.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call" and item.get("call_id"):
            self.tool_names[str(item["call_id"])] = str(item.get("name"))
        summary = _summary(event_type, data, self.tool_names)
        line = f"{seq} {event_type}{tag}" + (f" {summary}" if summary else "")
        print(line, file=self.out, flush=True)
        self.last_seq = seq

    def _mark_rerun(self, event_type: str, attempt: int | None) -> None:
        # Attempt 0 is the API's `response.created` (and `response.queued`); the first worker run is attempt 1.
        # Only a later run replaces output, and only if some of an earlier run's output was printed.
        if event_type in (CREATED, QUEUED) and attempt in (0, None):
            return
        if attempt is not None:
            rerun = self.highest_attempt is not None and self.highest_attempt >= 1 and attempt > self.highest_attempt
            self.highest_attempt = attempt if self.highest_attempt is None else max(self.highest_attempt, attempt)
        else:
            rerun = event_type == IN_PROGRESS and self.attempt_events
        if rerun:
            which = f"attempt {attempt}" if attempt is not None else "new attempt"
            print(f"--- re-run: {which} (discard the output above) ---", file=self.out, flush=True)
        self.attempt_events = True


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _MAX_SUMMARY else text[: _MAX_SUMMARY - 1] + "…"


def _quoted(text: Any) -> str:
    # JSON quoting shows the whitespace and newlines inside a delta.
    return _clip(json.dumps(text if isinstance(text, str) else "", ensure_ascii=False))


def _summary(event_type: str, data: dict[str, Any], tool_names: dict[str, str]) -> str:
    if event_type.endswith(".delta"):
        return _quoted(data.get("delta"))
    if event_type in ("response.output_item.added", "response.output_item.done"):
        return _item_summary(data.get("item") or {}, tool_names)
    if event_type == "response.output_text.done":
        return _quoted(data.get("text"))
    if event_type == "response.function_call_arguments.done":
        return _clip(f"{data.get('name', '')}({data.get('arguments', '')})")
    if event_type.startswith("response.content_part."):
        part = data.get("part") or {}
        return str(part.get("type", ""))
    response = data.get("response")
    if isinstance(response, dict):
        return _lifecycle_summary(response)
    return ""


def _item_summary(item: dict[str, Any], tool_names: dict[str, str]) -> str:
    kind = str(item.get("type", "?"))
    status = item.get("status")
    suffix = f" {status}" if status else ""
    if kind == "function_call":
        arguments = item.get("arguments")
        call = f"{item.get('name')}({arguments})" if arguments else str(item.get("name"))
        return _clip(f"{kind} {call}{suffix}")
    if kind == "function_call_output":
        call_id = str(item.get("call_id"))
        output = item.get("output")
        shown = f" {_quoted(output)}" if output else ""
        return f"{kind} {tool_names.get(call_id, call_id)}{suffix}{shown}"
    if kind == "message" and item.get("role"):
        return f"{kind} {item['role']}{suffix}"
    return f"{kind}{suffix}"


def _lifecycle_summary(response: dict[str, Any]) -> str:
    status = str(response.get("status", ""))
    error = response.get("error")
    if isinstance(error, dict) and error.get("message"):
        return _clip(f"{status}: {error['message']}")
    details = response.get("incomplete_details")
    if isinstance(details, dict) and details.get("reason"):
        return f"{status}: {details['reason']}"
    return status
