"""A response's events (the Responses stream) as AG-UI events: one response event gives at most one AG-UI event.

Pure: a `RunTranslator` is fed a run's response events in order, from `response.created` on, and answers
the AG-UI event each one becomes (or None). Because the mapping is one to one, an AG-UI frame can carry its
response event's sequence number as its SSE `id:`, and a client that resumes after id N is sent exactly the
frames that follow: the translator is fed the events up to N again (it needs them to know which item is a
message and which a call) and their frames are dropped.

| Responses event                                      | AG-UI event                                  |
|------------------------------------------------------|----------------------------------------------|
| response.created                                     | RUN_STARTED                                  |
| output_item.added: message / function_call / reasoning | TEXT_MESSAGE_START / TOOL_CALL_START / REASONING_START |
| output_text.delta, refusal.delta                     | TEXT_MESSAGE_CONTENT                         |
| function_call_arguments.delta                        | TOOL_CALL_ARGS                               |
| function_call_arguments.done (arguments not streamed) | TOOL_CALL_ARGS with the rest                |
| content_part.added / .done of reasoning_text         | REASONING_MESSAGE_START / _END               |
| reasoning.delta                                      | REASONING_MESSAGE_CONTENT                    |
| output_item.done: message / function_call / reasoning | TEXT_MESSAGE_END / TOOL_CALL_END / REASONING_END |
| output_item.done: function_call_output (a server tool) | TOOL_CALL_RESULT                           |
| response.completed, response.incomplete (not cancelled) | RUN_FINISHED                              |
| response.failed, response.incomplete (cancelled)     | RUN_ERROR                                    |
"""

from __future__ import annotations

from typing import Any

from ag_ui.core import (
    BaseEvent,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)
from ag_ui.core.events import TokenUsage

from shared import events

CANCELLED = "cancelled"  # RUN_ERROR code of a run cancelled through /v1/responses/{id}/cancel


class RunTranslator:
    """Translates one run's response events, in sequence order, to AG-UI events."""

    def __init__(self, thread_id: str, run_id: str) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self._calls: dict[str, str] = {}  # function_call item id -> its call_id (AG-UI's toolCallId)
        self._streamed_args: dict[str, int] = {}  # function_call item id -> argument characters sent

    def translate(self, event: dict[str, Any]) -> BaseEvent | None:
        kind = event["type"]
        if kind == events.CREATED:
            return RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id)
        if kind in events.TERMINAL_TYPES:
            return self._end(event["response"])
        if kind == "response.output_item.added":
            return self._item_added(event["item"])
        if kind == "response.output_item.done":
            return self._item_done(event["item"])
        if kind in ("response.output_text.delta", events.REFUSAL_DELTA) and event["delta"]:
            return TextMessageContentEvent(message_id=event["item_id"], delta=event["delta"])
        if kind == events.REASONING_DELTA and event["delta"]:
            return ReasoningMessageContentEvent(message_id=event["item_id"], delta=event["delta"])
        if kind == "response.function_call_arguments.delta":
            return self._arguments(event["item_id"], event["delta"])
        if kind == "response.function_call_arguments.done":
            # Arguments that arrive whole (no deltas, or fewer than the final text) are sent as one last piece.
            rest = event["arguments"][self._streamed_args.get(event["item_id"], 0) :]
            return self._arguments(event["item_id"], rest)
        if kind in ("response.content_part.added", "response.content_part.done"):
            if event["part"]["type"] != "reasoning_text":
                return None
            if kind == "response.content_part.added":
                return ReasoningMessageStartEvent(message_id=event["item_id"], role="reasoning")
            return ReasoningMessageEndEvent(message_id=event["item_id"])
        return None

    def _item_added(self, item: dict[str, Any]) -> BaseEvent | None:
        if item["type"] == "message":
            return TextMessageStartEvent(message_id=item["id"], role="assistant")
        if item["type"] == "function_call":
            self._calls[item["id"]] = item["call_id"]
            self._streamed_args[item["id"]] = 0
            return ToolCallStartEvent(tool_call_id=item["call_id"], tool_call_name=item["name"])
        if item["type"] == "reasoning":
            return ReasoningStartEvent(message_id=item["id"])
        return None  # a function_call_output is announced when its tool starts; AG-UI has only its result

    def _item_done(self, item: dict[str, Any]) -> BaseEvent | None:
        if item["type"] == "message":
            return TextMessageEndEvent(message_id=item["id"])
        if item["type"] == "function_call":
            return ToolCallEndEvent(tool_call_id=item["call_id"])
        if item["type"] == "reasoning":
            return ReasoningEndEvent(message_id=item["id"])
        if item["type"] == "function_call_output":
            return ToolCallResultEvent(
                message_id=item["id"], tool_call_id=item["call_id"], content=item["output"], role="tool"
            )
        return None

    def _arguments(self, item_id: str, delta: str) -> BaseEvent | None:
        if not delta or item_id not in self._calls:
            return None
        self._streamed_args[item_id] = self._streamed_args.get(item_id, 0) + len(delta)
        return ToolCallArgsEvent(tool_call_id=self._calls[item_id], delta=delta)

    def _end(self, response: dict[str, Any]) -> BaseEvent:
        status = response["status"]
        if status == "failed":
            error = response.get("error") or {}
            return RunErrorEvent(message=error.get("message") or "The run failed.", code=error.get("code"))
        if status == CANCELLED:
            return RunErrorEvent(message="The run was cancelled.", code=CANCELLED)
        result = None
        if status == "incomplete":
            result = {"status": status, "incomplete_details": response.get("incomplete_details")}
        return RunFinishedEvent(
            thread_id=self.thread_id, run_id=self.run_id, result=result, usage=_usage(response)
        )


def _usage(response: dict[str, Any]) -> list[TokenUsage] | None:
    usage = response.get("usage")
    if not usage:
        return None
    details = usage.get("output_tokens_details") or {}
    return [
        TokenUsage(
            model=response.get("model"),
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            total_tokens=usage.get("total_tokens"),
            reasoning_tokens=details.get("reasoning_tokens"),
        )
    ]
