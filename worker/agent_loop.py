"""One turn of the agent: stream from the model, run the tools it calls, feed results back, repeat.

Streaming and history are separate concerns here: events go out through the emitter as chunks arrive,
while `TurnOutput` collects the items the turn will commit to the conversation when it ends.

A re-run (the previous attempt's worker died) starts from what that attempt streamed (worker/resume.py):
finished items stay, tool results already streamed are not produced again, and the round that was cut
off is continued into the same items: the model is shown its partial answer and asked to go on from there.

A model call that fails in a way worth retrying (worker/upstream_retry.py) is continued the same way within
the attempt: what it streamed stays, reasoning or a refusal it left open is closed with what it had, and the
next call (after a wait, or on the agent's next upstream) goes on from the partial message under the same
item id, or regenerates the open tool calls' arguments, of which only the part beyond what was streamed is
sent. No delta is ever sent twice.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import openai
from openai import AsyncOpenAI

from shared import events, ids, metrics
from shared.models import Item, Status, TurnOutcome, TurnRequest, Usage
from worker.agents import Agent
from worker.approvals import Answer, Approvals, Request, answers, pending_requests, refusal, request_item, run_item
from worker.chat_stream import Chunk, chat_chunks
from worker.emitter import Emitter
from worker.prompt import Message, chat_tool, to_messages, tool_run_messages
from worker.resume import Resumed
from worker.tools import Tool, ToolCall
from worker.turn_output import TurnOutput
from worker.turn_telemetry import TurnTelemetry
from worker.upstream_request import chat_request
from worker.upstream_retry import Backoff, TurnRetries, classify

Continuation = Literal["instruction", "continue_final_message"]

# Sent after a partial assistant message when the upstream cannot continue a message natively.
CONTINUE_INSTRUCTION = (
    "Your previous message was cut off. Continue it exactly from where it stopped, "
    "without repeating anything already written."
)


@dataclass
class Limits:
    first_token_timeout_s: float
    max_output_bytes: int
    # A retry wait longer than this sends the turn back to the queue instead of holding its worker.
    retry_inline_max_s: float = 5.0


@dataclass
class _Call:
    index: int  # output index
    item_id: str
    call_id: str
    name: str
    arguments: str = ""
    # A call a dead attempt opened: the model's regenerated arguments are matched against what was
    # already streamed, and only the part beyond it is sent.
    resumed: bool = False
    regenerated: str = ""
    closed: bool = False  # its done events were already streamed
    # A call to a tool that needs a person's approval: not streamed as a call; the round ends with an
    # approval request for it instead (worker/approvals.py).
    approval: bool = False


@dataclass
class _Part:
    """An item streaming its one content part: a reasoning item, or an assistant message's text or refusal."""

    kind: events.PartKind
    item_id: str
    index: int  # output index
    text: str = ""


@dataclass
class _Round:
    calls: list[_Call] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    over_budget: bool = False


@dataclass
class _Cut:
    """The round a dead attempt was streaming when it stopped."""

    text: str  # what the model had said in it, to be continued
    message: tuple[str, int] | None  # (item id, output index) of the message still open, if any
    calls: list[_Call]


@dataclass
class _Live:
    """The round being streamed, as far as it went: what a failed call leaves to the next one."""

    rnd: _Round
    parts: dict[events.PartKind, _Part]
    calls: dict[int, _Call]
    resumed_calls: list[_Call]


class AgentTurn:
    def __init__(
        self,
        req: TurnRequest,
        agent: Agent,
        history: list[Item],
        client: AsyncOpenAI,
        emitter: Emitter,
        limits: Limits,
        *,
        attempt: int = 1,
        resumed: Resumed | None = None,
        continuation: Continuation = "instruction",
        telemetry: TurnTelemetry | None = None,
        retries: TurnRetries | None = None,
        approvals: Approvals | None = None,
    ) -> None:
        self.req = req
        self.approvals = approvals
        self.agent = agent
        self.client = client
        self.emitter = emitter
        self.emit = emitter.emit
        self.limits = limits
        self.attempt = attempt
        self.continuation = continuation
        self.resumed = resumed or Resumed()
        self.telemetry = telemetry or TurnTelemetry(req, attempt, resumed=bool(self.resumed))
        self.telemetry.agent(agent.model)
        self.output = TurnOutput.restore(self.resumed)
        self.client_tools = frozenset(t["name"] for t in req.tools if t.get("type") == "function")
        # A client's own function tool shadows a server tool of the same name: the client asked for it.
        self.server_tools: dict[str, Tool] = {t.name: t for t in agent.tools if t.name not in self.client_tools}
        # Without a place to record requests (approvals None) no tool can wait on a person: none is offered.
        self.needs_approval = frozenset(agent.approval_required) & set(self.server_tools)
        if approvals is None:
            self.server_tools = {n: t for n, t in self.server_tools.items() if n not in self.needs_approval}
        self.chat_tools = [chat_tool(t) for t in req.tools if t.get("type") == "function"] + [
            t.chat_schema() for t in self.server_tools.values()
        ]
        self.instructions = "\n\n".join(s for s in (agent.instructions, req.instructions or "") if s)
        self.base = history + req.input
        self.messages: list[Message] = to_messages(self.instructions, self.base)
        self.usage = Usage()
        # Without retries (benchmarks, tools that call a client directly) a failed call fails the turn.
        self.retries = retries
        self._live: _Live | None = None
        self.served_by: str | None = None  # the upstream that answered the turn's last model call

    async def run(self) -> TurnOutcome:
        round_no, first = await self._resume()
        if isinstance(first, TurnOutcome):
            return first
        if round_no == 0 and first is None and self.approvals is not None:
            await self._answer_approvals()
        cut = first
        while True:
            rnd = await self._round(cut)
            if isinstance(rnd, TurnOutcome):
                return rnd
            cut = None
            outcome = await self._after_round(rnd, round_no)
            if outcome is not None:
                return outcome
            round_no += 1

    async def _after_round(self, rnd: _Round, round_no: int) -> TurnOutcome | None:
        """Runs the round's tool calls; returns the outcome when the turn ends here."""
        self.usage = self.usage.add(rnd.usage)
        if rnd.over_budget or rnd.finish_reason == "length":
            return self._end(Status.INCOMPLETE, incomplete_reason="max_output_tokens")
        if not rnd.calls:
            return self._end(Status.COMPLETED)
        self.messages.append(_assistant_message(rnd))
        answered = self.resumed.results()
        pending = [c for c in rnd.calls if c.call_id not in answered]
        if round_no >= self.agent.max_tool_rounds:
            # Answer the calls anyway so history keeps every call paired with a result (a call waiting for
            # approval was never shown: it is dropped).
            limit = f"tool round limit of {self.agent.max_tool_rounds} reached; the tool was not run"
            for call in pending:
                if not call.approval:
                    await self._tool_result(call, json.dumps({"error": limit}), self._opened_result(call))
            return self._end(Status.INCOMPLETE, incomplete_reason="max_messages")
        asking = [c for c in pending if c.approval]
        await asyncio.gather(
            *(self._run_tool(c) for c in pending if c.name not in self.client_tools and not c.approval)
        )
        if asking:
            for call in asking:
                await self._ask_approval(call)
            return self._end(Status.COMPLETED)  # waits on the client: it answers in its next turn
        self.messages += self._streamed_results(rnd.calls)
        if any(c.name in self.client_tools for c in rnd.calls):
            return self._end(Status.COMPLETED)  # the client runs its own tools and comes back
        return None

    def _end(self, status: Status, incomplete_reason: str | None = None) -> TurnOutcome:
        upstream = None
        if self.served_by is not None:
            metrics.UPSTREAM_SERVED.labels(self.served_by).inc()
            # Named in the Response only for agents that can fall back: for the others it is always the same.
            upstream = self.served_by if self.agent.fallbacks else None
        return TurnOutcome(
            status=status,
            output=self.settled_output(),
            usage=self.usage,
            incomplete_reason=incomplete_reason,
            upstream=upstream,
        )

    def settled_output(self) -> list[Item]:
        return self.output.settled(self.client_tools)

    # --- picking up after a dead attempt --------------------------------------------------------

    async def _resume(self) -> tuple[int, _Cut | TurnOutcome | None]:
        """Where the turn starts: the round number, and the cut-off round to continue (or the outcome)."""
        items = self.resumed.items
        if not items:
            return 0, None
        if items[-1]["type"] == "mcp_approval_request" and len(items) - 1 in self.resumed.done:
            return 0, self._end(Status.COMPLETED)  # it had ended waiting on the client; only the commit was missing
        if all(item["type"] == "mcp_call" for item in items):
            # The dead attempt had answered approvals (the rest are answered by run()), and no more.
            self.messages = to_messages(self.instructions, self.base + items)
            return 0, None
        await self._settle_open_parts()
        # The last round is [reasoning][message...][function_call...], possibly followed by its tool results.
        end = len(items)
        while end and items[end - 1]["type"] == "function_call_output":
            end -= 1
        start = end
        while start and items[start - 1]["type"] == "function_call":
            start -= 1
        while start and items[start - 1]["type"] in ("message", "reasoning"):
            start -= 1
        # Every item before the last round is finished: a round starts only once the previous one's tools returned.
        earlier = [items[i] for i in range(start) if i in self.resumed.done]
        self.messages = to_messages(self.instructions, self.base + earlier)
        round_no = Resumed(items=items[:start]).rounds()
        calls = [self._resumed_call(i) for i in range(start, end) if items[i]["type"] == "function_call"]
        answers = [i for i in range(start, end) if self.resumed.kind(i) == "text"]
        text = next((self._resumed_text(i) for i in answers), "")
        if all(i in self.resumed.done for i in range(start, end)):
            if not calls:
                if any(items[i]["type"] == "message" for i in range(start, end)):
                    # The model had finished answering; only the commit was missing.
                    return round_no, self._end(Status.COMPLETED)
                return round_no, None  # cut off after (or while) reasoning: the round is run again
            # The model's round was over; its tools had not all returned yet.
            outcome = await self._after_round(_Round(calls=calls, text=text), round_no)
            return round_no + 1, outcome
        open_message = next(((items[i]["id"], i) for i in answers if i not in self.resumed.done), None)
        return round_no, _Cut(text=text, message=open_message, calls=calls)

    async def _settle_open_parts(self) -> None:
        """Closes the reasoning item or refusal a dead attempt left open, with what it had streamed.

        Neither is continued: a model asked to go on from a partial answer gives no reasoning for it, and a
        refusal is whole as far as it went. A re-run that starts its round afresh reasons again, in a new item.
        """
        for index in self.resumed.open():
            kind = self.resumed.kind(index)
            if kind in ("reasoning", "refusal"):
                item_id = self.resumed.items[index]["id"]
                await self._close_part(_Part(kind, item_id, index, self.resumed.text.get(index, "")))
                self.resumed.items[index] = self.output.items[index]
                self.resumed.done.add(index)

    def _resumed_call(self, index: int) -> _Call:
        item = self.resumed.items[index]
        closed = index in self.resumed.done
        arguments = item["arguments"] if closed else self.resumed.arguments.get(index, "")
        return _Call(index, item["id"], item["call_id"], item["name"], arguments, resumed=True, closed=closed)

    def _resumed_text(self, index: int) -> str:
        if index in self.resumed.done:
            return "".join(p.get("text", "") for p in self.resumed.items[index].get("content") or [])
        return self.resumed.text.get(index, "")

    def _streamed_results(self, calls: list[_Call]) -> list[Message]:
        """Tool messages for results a dead attempt streamed, which this attempt did not produce itself."""
        by_call = {
            item["call_id"]: item
            for i, item in enumerate(self.resumed.items)
            if i in self.resumed.done and item["type"] == "function_call_output"
        }
        return [
            {"role": "tool", "tool_call_id": c.call_id, "content": by_call[c.call_id]["output"]}
            for c in calls
            if c.call_id in by_call
        ]

    def _opened_result(self, call: _Call) -> tuple[str, int] | None:
        """The result item a dead attempt opened for this call (and did not finish), to finish it here."""
        for index in self.resumed.open():
            item = self.resumed.items[index]
            if item["type"] == "function_call_output" and item["call_id"] == call.call_id:
                return item["id"], index
        return None

    # --- retrying the model ------------------------------------------------------------------------

    async def _round(self, cut: _Cut | None) -> _Round | TurnOutcome:
        """One model round; a failed call is retried (continuing what it streamed) while the retries allow."""
        if self.retries is None:
            return await self._stream_round(cut)
        while True:
            try:
                rnd = await self._stream_round(cut)
            except (openai.APIError, TimeoutError) as exc:
                failure = classify(exc, self.limits.first_token_timeout_s)
                continued = await self._cut_short()
                if failure is None:
                    if cut is not None and isinstance(exc, openai.APIStatusError):
                        # The upstream refuses to go on from a partial answer: the turn ends with what was
                        # streamed (the open message marked incomplete, as a turn stopped by a limit leaves it).
                        return self._end(Status.INCOMPLETE, incomplete_reason="upstream_error")
                    raise
                cut = continued
                delay = await self.retries.failed(failure)
                if delay > self.limits.retry_inline_max_s:
                    raise Backoff(delay) from exc  # the next attempt continues from what the stream holds
                await asyncio.sleep(delay)
                continue
            self.served_by = self.retries.route.name
            if self.retries.retrying:
                await self.retries.served()
            return rnd

    async def _cut_short(self) -> _Cut | None:
        """What the failed call had streamed, as the cut-off round the next call continues (None: start over).

        An open reasoning item or refusal is closed with what it has and not continued, as in a re-run.
        """
        live, self._live = self._live, None
        if live is None:
            return None
        await self._close(live.parts, "reasoning", "refusal")
        text = live.parts.get("text")
        calls = {id(c): c for c in [*live.resumed_calls, *live.calls.values()]}
        ordered = sorted(calls.values(), key=lambda c: c.index)
        for call in ordered:
            # Its arguments are regenerated by the next call; only the part past what was streamed is sent.
            call.resumed, call.regenerated = True, ""
        if not live.rnd.text and not ordered:
            return None
        message = (text.item_id, text.index) if text else None
        return _Cut(text=live.rnd.text, message=message, calls=ordered)

    # --- streaming from the model ---------------------------------------------------------------

    def _request(self, cut: _Cut | None) -> dict[str, Any]:
        messages = self.messages
        if cut is not None and cut.text:
            messages = [*self.messages, {"role": "assistant", "content": cut.text}]
            if self.continuation == "instruction":
                messages.append({"role": "system", "content": CONTINUE_INSTRUCTION})
        kwargs = chat_request(self.req, self.agent, messages, self.chat_tools, self.output.items)
        if self.retries is not None:
            kwargs["model"] = self.retries.route.model
        if cut is not None and cut.text and self.continuation == "continue_final_message":
            # vLLM's (and compatible servers') native way to extend the last assistant message.
            kwargs["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        return kwargs

    async def _stream_round(self, cut: _Cut | None = None) -> _Round:
        rnd = _Round(text=cut.text if cut else "")
        # The open parts, at most one of each kind. The message a dead attempt left open is continued under
        # its ids; its text part is already open.
        parts: dict[events.PartKind, _Part] = {}
        if cut and cut.message:
            parts["text"] = _Part("text", *cut.message, text=cut.text)
        answering = cut is not None  # reasoning is only taken before the answer
        resumed_calls = cut.calls if cut else []
        calls: dict[int, _Call] = {}
        self._live = _Live(rnd, parts, calls, resumed_calls)
        client, upstream_name = self.client, None
        if self.retries is not None:
            route = self.retries.route
            client, upstream_name = route.client, route.name
            self.telemetry.agent(route.model)
        first_token = asyncio.timeout(self.limits.first_token_timeout_s)
        async with self.telemetry.model_call(upstream_name) as upstream, first_token as deadline:
            # Breaking out of this loop closes the HTTP stream, so a cancelled turn stops costing tokens at once.
            async for chunk in chat_chunks(client, self._request(cut)):
                deadline.reschedule(None)
                if upstream.waiting:
                    upstream.first_chunk(chunk)
                usage = chunk.get("usage")
                if usage:
                    rnd.usage = _usage(usage)
                choices = chunk.get("choices")
                if not choices:
                    continue  # usage-only or empty update
                choice = choices[0]
                delta = choice.get("delta") or {}
                # vLLM, DeepSeek and Ollama stream reasoning as reasoning_content; some servers call it reasoning.
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                # Reasoning comes before the answer: reasoning streamed after the answer began has no item to go
                # in, and a continued round's reasoning was settled by the dead attempt (see _resume).
                if thought and not answering:
                    part = parts.get("reasoning") or await self._open_part(parts, "reasoning")
                    if await self._add_text(part, thought):
                        rnd.over_budget = True
                        break
                said = delta.get("refusal")
                if said and cut is None:
                    answering = True
                    await self._close(parts, "reasoning", "text")
                    part = parts.get("refusal") or await self._open_part(parts, "refusal")
                    if await self._add_text(part, said):
                        rnd.over_budget = True
                        break
                content = delta.get("content")
                if content:
                    answering = True
                    await self._close(parts, "reasoning", "refusal")
                    part = parts.get("text") or await self._open_part(parts, "text")
                    rnd.text += content
                    if await self._add_text(part, content):
                        rnd.over_budget = True
                        break
                for tc in delta.get("tool_calls") or ():
                    answering = True
                    await self._close(parts, "reasoning", "refusal", "text")
                    position = tc.get("index", 0)
                    call = calls.get(position)
                    if call is None:
                        shown = sum(1 for c in calls.values() if not c.approval)  # the calls clients saw
                        call = calls[position] = await self._open_call(tc, resumed_calls, shown)
                        rnd.calls.append(call)
                    arguments = (tc.get("function") or {}).get("arguments")
                    if arguments:
                        await self._add_arguments(call, arguments)
                if choice.get("finish_reason"):
                    rnd.finish_reason = choice["finish_reason"]
            upstream.done(rnd.usage, rnd.finish_reason)
        self._live = None
        if not rnd.over_budget:
            await self._close(parts, "reasoning", "refusal", "text")
        # Calls a dead attempt opened stay in the turn even if the model did not produce them again:
        # clients were shown them, so they are finished with what they have.
        rnd.calls += [c for c in resumed_calls if c not in rnd.calls]
        rnd.calls.sort(key=lambda c: c.index)
        for call in rnd.calls:
            if call.closed or call.approval:
                continue
            item = events.function_call_item(call.item_id, call.call_id, call.name, call.arguments, "completed")
            self.output.replace(call.index, item)
            await self.emit(events.arguments_done(call.item_id, call.index, call.name, call.arguments))
            await self.emit(events.output_item_done(call.index, item))
        return rnd

    async def _open_call(self, tc: Chunk, resumed_calls: list[_Call], position: int) -> _Call:
        name = (tc.get("function") or {}).get("name") or ""
        if name in self.needs_approval:
            # Never streamed as a call, so never one a dead attempt opened: it becomes an approval request.
            call = _Call(-1, ids.function_call_id(), tc.get("id") or ids.call_id(), name)
            call.approval = True
            return call
        if position < len(resumed_calls):
            return resumed_calls[position]  # the dead attempt's call, continued under its ids
        self.telemetry.output_started()
        call = _Call(-1, ids.function_call_id(), tc.get("id") or ids.call_id(), name)
        call.index = self.output.add(events.function_call_item(call.item_id, call.call_id, name, "", "in_progress"))
        await self.emit(events.output_item_added(call.index, self.output.items[call.index]))
        return call

    async def _add_arguments(self, call: _Call, fragment: str) -> None:
        if call.approval:
            call.arguments += fragment
            return
        if call.resumed:
            # Regenerated arguments: skip what the dead attempt already streamed, send only what is new.
            call.regenerated += fragment
            fragment = "" if call.closed else call.regenerated[len(call.arguments) :]
            if not fragment:
                return
        call.arguments += fragment
        await self.emit(events.arguments_delta(call.item_id, call.index, fragment))

    async def _open_part(self, parts: dict[events.PartKind, _Part], kind: events.PartKind) -> _Part:
        """Opens an item with one streamed part: a reasoning item, or an assistant message's text or refusal."""
        self.telemetry.output_started()
        item_id = ids.reasoning_id() if kind == "reasoning" else ids.message_id()
        item = events.streamed_item(kind, item_id, "", "in_progress")
        index = self.output.add(item)
        await self.emit(events.output_item_added(index, item))
        await self.emit(events.content_part_added(item_id, index, kind))
        part = parts[kind] = _Part(kind, item_id, index)
        return part

    async def _add_text(self, part: _Part, delta: str) -> bool:
        """Streams `delta` into the part; True when the turn's output is over its byte budget."""
        part.text += delta
        self.output.append_text(part.index, delta, part.kind)
        await self.emit(events.part_delta(part.kind, part.item_id, part.index, delta))
        return self.output.text_bytes > self.limits.max_output_bytes

    async def _close(self, parts: dict[events.PartKind, _Part], *kinds: events.PartKind) -> None:
        """Ends the items of the open parts of these kinds, in the order they were opened."""
        for part in sorted((parts.pop(k) for k in kinds if k in parts), key=lambda p: p.index):
            await self._close_part(part)

    async def _close_part(self, part: _Part) -> None:
        item = events.streamed_item(part.kind, part.item_id, part.text, "completed")
        self.output.replace(part.index, item)
        await self.emit(events.part_done(part.kind, part.item_id, part.index, part.text))
        await self.emit(events.content_part_done(part.item_id, part.index, part.text, part.kind))
        await self.emit(events.output_item_done(part.index, item))

    # --- tools --------------------------------------------------------------------------------

    async def _run_tool(self, call: _Call) -> None:
        # Announce the result item first: between this and its `done`, clients show "calling X…".
        opened = self._opened_result(call) or await self._open_tool_result(call)
        await self.emitter.flush()
        tool = self.server_tools.get(call.name)
        if tool is None:
            output = json.dumps({"error": f"no tool named {call.name!r}"})
        else:
            context = ToolCall(call.call_id, self.req.response_id, self.attempt)
            result = await self.telemetry.run_tool(
                tool, call.arguments, timeout_s=self.agent.tool_timeout_s, call=context
            )
            output = result.output
        await self._tool_result(call, output, opened)
        # Written at once: a result on record is never produced again, even if this worker dies next.
        await self.emitter.flush()

    # --- tools that wait on a person (worker/approvals.py) --------------------------------------------

    async def _ask_approval(self, call: _Call) -> None:
        assert self.approvals is not None
        request = Request(ids.new_id(ids.APPROVAL_REQUEST), call.name, call.arguments or "{}", self.agent.name)
        await self.approvals.ask(request, project=self.req.project, response_id=self.req.response_id)
        item = request_item(request)
        index = self.output.add(item)
        await self.emit(events.output_item_added(index, item))
        await self.emit(events.output_item_done(index, item))

    async def _answer_approvals(self) -> None:
        """Answers the approval requests this turn's input answers, and states the expiry of any pending one
        past its timeout; each gets an `mcp_call` item, and the model sees the call and its result."""
        assert self.approvals is not None
        done = {i.get("approval_request_id") for i in self.output.items if i["type"] == "mcp_call"}
        given = {a["approval_request_id"]: a for a in answers(self.req.input)}
        for pending in pending_requests(self.base):
            request_id = pending["id"]
            if request_id not in done and request_id not in given and await self.approvals.expired(request_id):
                given[request_id] = {"approval_request_id": request_id, "expired": True}
        for request_id, answer in given.items():
            if request_id not in done:
                self.messages += tool_run_messages(await self._answer(request_id, answer))

    async def _answer(self, request_id: str, answer: Item) -> Item:
        assert self.approvals is not None
        claimed = await self.approvals.claim(request_id, self.req.response_id, self.req.created_at)
        request = claimed.request or Request(request_id, "unknown", "{}", self.agent.name)
        output, error = claimed.output, claimed.error
        if claimed.answer is Answer.RUN:
            if answer.get("expired"):
                error = refusal(Answer.EXPIRED, self.approvals.timeout_s)
            elif not answer.get("approve"):
                error = refusal(Answer.RUN, self.approvals.timeout_s, answer.get("reason"))
            else:
                output = await self._run_approved(request)
            await self.approvals.settle(request_id, output=output, error=error)
        elif claimed.answer is not Answer.DONE:
            error = refusal(claimed.answer, self.approvals.timeout_s)
        item = run_item(request, output=output, error=error)
        index = self.output.add(item)
        await self.emit(events.output_item_added(index, item))
        await self.emit(events.output_item_done(index, item))
        # Written at once: a result on record is never produced again, even if this worker dies next.
        await self.emitter.flush()
        return item

    async def _run_approved(self, request: Request) -> str:
        tool = self.server_tools.get(request.name)
        if tool is None:
            return json.dumps({"error": f"no tool named {request.name!r}"})
        context = ToolCall(request.request_id, self.req.response_id, self.attempt)
        result = await self.telemetry.run_tool(
            tool, request.arguments, timeout_s=self.agent.tool_timeout_s, call=context
        )
        return result.output

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


def _usage(usage: Chunk) -> Usage:
    details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        reasoning_tokens=details.get("reasoning_tokens") or 0,
    )


def _assistant_message(rnd: _Round) -> Message:
    return {
        "role": "assistant",
        "content": rnd.text or None,
        "tool_calls": [
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
            for c in rnd.calls
        ],
    }
