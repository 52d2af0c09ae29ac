"""One turn of the agent: stream from the model, run the tools it calls, feed results back, repeat.

Streaming and history are separate concerns here: events go out through the emitter as chunks arrive,
while `TurnOutput` collects the items the turn will commit to the conversation when it ends.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import cast

from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from shared import events, ids
from shared.models import Item, Status, TurnOutcome, TurnRequest, Usage
from worker.agents import Agent
from worker.emitter import Emitter
from worker.prompt import Message, chat_tool, to_messages
from worker.tools import Tool
from worker.turn_output import TurnOutput
from worker.upstream_request import chat_request


@dataclass
class Limits:
    first_token_timeout_s: float
    max_output_bytes: int


@dataclass
class _Call:
    index: int  # output index
    item_id: str
    call_id: str
    name: str
    arguments: str = ""


@dataclass
class _Round:
    calls: list[_Call] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    over_budget: bool = False


class AgentTurn:
    def __init__(
        self,
        req: TurnRequest,
        agent: Agent,
        history: list[Item],
        client: AsyncOpenAI,
        emitter: Emitter,
        limits: Limits,
    ) -> None:
        self.req = req
        self.agent = agent
        self.client = client
        self.emit = emitter.emit
        self.limits = limits
        self.output = TurnOutput()
        self.client_tools = frozenset(t["name"] for t in req.tools if t.get("type") == "function")
        # A client's own function tool shadows a server tool of the same name: the client asked for it.
        self.server_tools: dict[str, Tool] = {t.name: t for t in agent.tools if t.name not in self.client_tools}
        self.chat_tools = [chat_tool(t) for t in req.tools if t.get("type") == "function"] + [
            t.chat_schema() for t in self.server_tools.values()
        ]
        instructions = "\n\n".join(s for s in (agent.instructions, req.instructions or "") if s)
        self.messages: list[Message] = to_messages(instructions, history + req.input)
        self.usage = Usage()

    async def run(self) -> TurnOutcome:
        for round_no in range(self.agent.max_tool_rounds + 1):
            rnd = await self._stream_round()
            self.usage = self.usage.add(rnd.usage)
            if rnd.over_budget or rnd.finish_reason == "length":
                return self._end(Status.INCOMPLETE, incomplete_reason="max_output_tokens")
            if not rnd.calls:
                return self._end(Status.COMPLETED)
            self.messages.append(_assistant_message(rnd))
            if round_no == self.agent.max_tool_rounds:
                # Answer the calls anyway so history keeps every call paired with a result.
                limit = f"tool round limit of {self.agent.max_tool_rounds} reached; the tool was not run"
                for call in rnd.calls:
                    await self._tool_result(call, json.dumps({"error": limit}), opened=None)
                return self._end(Status.INCOMPLETE, incomplete_reason="max_messages")
            await asyncio.gather(*(self._run_tool(c) for c in rnd.calls if c.name not in self.client_tools))
            if any(c.name in self.client_tools for c in rnd.calls):
                return self._end(Status.COMPLETED)  # the client runs its own tools and comes back
        raise AssertionError("unreachable: the last round always returns")

    def _end(self, status: Status, incomplete_reason: str | None = None) -> TurnOutcome:
        return TurnOutcome(
            status=status,
            output=self.settled_output(),
            usage=self.usage,
            incomplete_reason=incomplete_reason,
        )

    def settled_output(self) -> list[Item]:
        return self.output.settled(self.client_tools)

    # --- streaming from the model ---------------------------------------------------------------

    async def _stream_round(self) -> _Round:
        rnd = _Round()
        kwargs = chat_request(self.req, self.agent, self.messages, self.chat_tools, self.output.items)
        message_index: int | None = None
        message_id = ""
        calls: dict[int, _Call] = {}
        async with asyncio.timeout(self.limits.first_token_timeout_s) as deadline:
            stream = cast(AsyncStream[ChatCompletionChunk], await self.client.chat.completions.create(**kwargs))
            # Leaving this block closes the HTTP stream, so a cancelled turn stops costing tokens at once.
            async with stream:
                async for chunk in stream:
                    deadline.reschedule(None)
                    if chunk.usage is not None:
                        rnd.usage = Usage(
                            input_tokens=chunk.usage.prompt_tokens, output_tokens=chunk.usage.completion_tokens
                        )
                    if not chunk.choices:
                        continue  # usage-only or empty update
                    choice = chunk.choices[0]
                    delta = choice.delta
                    if delta is not None and delta.content:
                        if message_index is None:
                            message_id = ids.message_id()
                            message_index = await self._open_message(message_id)
                        rnd.text += delta.content
                        self.output.append_text(message_index, delta.content)
                        await self.emit(events.text_delta(message_id, message_index, delta.content))
                        if self.output.text_bytes > self.limits.max_output_bytes:
                            rnd.over_budget = True
                            break
                    for tc in (delta.tool_calls if delta is not None else None) or []:
                        if message_index is not None:
                            await self._close_message(message_id, message_index, rnd.text)
                            message_index = None
                        call = calls.get(tc.index)
                        if call is None:
                            name = (tc.function.name if tc.function else None) or ""
                            call = _Call(-1, ids.function_call_id(), tc.id or ids.call_id(), name)
                            call.index = self.output.add(
                                events.function_call_item(call.item_id, call.call_id, name, "", "in_progress")
                            )
                            calls[tc.index] = call
                            rnd.calls.append(call)
                            await self.emit(events.output_item_added(call.index, self.output.items[call.index]))
                        if tc.function and tc.function.arguments:
                            call.arguments += tc.function.arguments
                            await self.emit(events.arguments_delta(call.item_id, call.index, tc.function.arguments))
                    if choice.finish_reason:
                        rnd.finish_reason = choice.finish_reason
        if message_index is not None and not rnd.over_budget:
            await self._close_message(message_id, message_index, rnd.text)
        for call in rnd.calls:
            item = events.function_call_item(call.item_id, call.call_id, call.name, call.arguments, "completed")
            self.output.replace(call.index, item)
            await self.emit(events.arguments_done(call.item_id, call.index, call.name, call.arguments))
            await self.emit(events.output_item_done(call.index, item))
        return rnd

    async def _open_message(self, item_id: str) -> int:
        item = events.message_item(item_id, "", "in_progress")
        index = self.output.add(item)
        await self.emit(events.output_item_added(index, item))
        await self.emit(events.content_part_added(item_id, index))
        return index

    async def _close_message(self, item_id: str, index: int, text: str) -> None:
        item = events.message_item(item_id, text, "completed")
        self.output.replace(index, item)
        await self.emit(events.text_done(item_id, index, text))
        await self.emit(events.content_part_done(item_id, index, text))
        await self.emit(events.output_item_done(index, item))

    # --- tools --------------------------------------------------------------------------------

    async def _run_tool(self, call: _Call) -> None:
        # Announce the result item first: between this and its `done`, clients show "calling X…".
        opened = await self._open_tool_result(call)
        tool = self.server_tools.get(call.name)
        if tool is None:
            output = json.dumps({"error": f"no tool named {call.name!r}"})
        else:
            output = (await tool.run(call.arguments, timeout_s=self.agent.tool_timeout_s)).output
        await self._tool_result(call, output, opened)

    async def _open_tool_result(self, call: _Call) -> tuple[str, int]:
        item_id = ids.function_call_output_id()
        item = events.function_call_output_item(item_id, call.call_id, "", "in_progress")
        index = self.output.add(item)
        await self.emit(events.output_item_added(index, item))
        return item_id, index

    async def _tool_result(self, call: _Call, output: str, opened: tuple[str, int] | None) -> None:
        item_id, index = opened or await self._open_tool_result(call)
        item = events.function_call_output_item(item_id, call.call_id, output, "completed")
        self.output.replace(index, item)
        await self.emit(events.output_item_done(index, item))
        self.messages.append({"role": "tool", "tool_call_id": call.call_id, "content": output})


def _assistant_message(rnd: _Round) -> Message:
    return {
        "role": "assistant",
        "content": rnd.text or None,
        "tool_calls": [
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
            for c in rnd.calls
        ],
    }
