"""`turnstream chat`: a terminal chat that streams each answer token by token.

It speaks to the API only through the official `openai` client, so every session also exercises the
wire compatibility. The conversation lives on the server; the REPL keeps nothing but its id.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from typing import Any, TextIO

import openai
from openai import OpenAI
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseFunctionToolCall,
    ResponseFunctionToolCallOutputItem,
    ResponseIncompleteEvent,
    ResponseOutputItemDoneEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)
from openai.types.responses.response_output_item import McpApprovalRequest, McpCall

# Sent when no key is configured (TURNSTREAM_API_KEY), to an API that checks none: the SDK refuses to
# start without one. Never the upstream key: that secret is for the model provider, not for whatever
# server --url points at.
API_KEY = "turnstream"
QUIT = "/quit"
PROMPT = "you> "
BOT = "bot> "
_DIM, _RESET = "\x1b[2m", "\x1b[0m"
_MAX_RESULT_CHARS = 200  # a tool result longer than this is shown cut, on one line
COMMANDS = (
    "/new: start a new conversation · /resume ID: continue a conversation · /model NAME: switch model · "
    "/quit (or Ctrl-D): leave"
)


def api_base_url(url: str) -> str:
    """Every route lives under /v1, so `http://host:8000` and `http://host:8000/v1` both work."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def describe_api_error(exc: openai.APIError) -> str:
    """The server's own error message (not the SDK's dump of the whole body), with the status code."""
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    text = message if isinstance(message, str) and message else exc.message
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 401:
            # The CLI sends TURNSTREAM_API_KEY: the one thing its user can change.
            text = f"{text} Set TURNSTREAM_API_KEY to your key."
        return f"{exc.status_code} {text}"
    return text


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Printer:
    """Keeps the transcript readable: answer text after `bot> `, every note on a line of its own."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.colour = _isatty(out)
        self.at_line_start = True
        self.in_text = False

    def write(self, text: str) -> None:
        if not text:
            return
        self.out.write(text)
        # Flushed per write: a token that sits in a buffer is not streaming.
        self.out.flush()
        self.at_line_start = text.endswith("\n")

    def end_line(self) -> None:
        if not self.at_line_start:
            self.write("\n")

    def text(self, delta: str) -> None:
        if not self.in_text:
            self.end_line()
            self.write(BOT)
            self.in_text = True
        self.write(delta)

    def note(self, message: str, *, dim: bool = False) -> None:
        self.end_line()
        self.in_text = False
        if dim and self.colour:
            message = f"{_DIM}{message}{_RESET}"
        self.write(message + "\n")


class _Turn:
    """What one streamed response has shown so far, and how to render its next event."""

    def __init__(self, printer: _Printer) -> None:
        self.printer = printer
        self.response_id: str | None = None
        self.tool_names: dict[str, str] = {}  # call_id -> tool name, to label the call's output
        self.shown = False
        self.approvals: list[McpApprovalRequest] = []  # tool calls waiting on the user's y/n

    def show(self, event: ResponseStreamEvent) -> bool:
        """Renders one event; True once the response has ended."""
        p = self.printer
        if isinstance(event, ResponseCreatedEvent):
            self.response_id = event.response.id
        elif isinstance(event, ResponseTextDeltaEvent):
            p.text(event.delta)
            self.shown = True
        elif isinstance(event, ResponseOutputItemDoneEvent):
            item = event.item
            if isinstance(item, ResponseFunctionToolCall):
                self.tool_names[item.call_id] = item.name
                p.note(f"[calling {item.name}({item.arguments})]")
                self.shown = True
            elif isinstance(item, McpApprovalRequest):
                self.approvals.append(item)
                self.shown = True
            elif isinstance(item, McpCall):
                failure = item.error.content if item.error is not None and hasattr(item.error, "content") else None
                p.note(f"[{item.name} not run: {failure}]" if failure else f"[{item.name} done]", dim=True)
            elif isinstance(item, ResponseFunctionToolCallOutputItem):
                name = self.tool_names.get(item.call_id or "", "tool")
                failure = _tool_error(item.output)
                p.note(f"[{name} failed: {failure}]" if failure else f"[{name} → {_clip(item.output)}]", dim=True)
        elif isinstance(event, ResponseCompletedEvent):
            if not self.shown:
                p.note("[no output]", dim=True)
            return True
        elif isinstance(event, ResponseFailedEvent):
            error = event.response.error
            p.note(f"[failed: {error.message if error else 'unknown error'}]")
            return True
        elif isinstance(event, ResponseIncompleteEvent):
            if event.response.status == "cancelled":
                p.note("[cancelled]")
            else:
                details = event.response.incomplete_details
                p.note(f"[incomplete: {(details.reason if details else None) or 'unknown reason'}]")
            return True
        return False


def _clip(output: object, limit: int = _MAX_RESULT_CHARS) -> str:
    text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
    text = " ".join(text.split())  # one line, whatever the tool returned
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tool_error(output: object) -> str | None:
    """Tools report failure as {"error": ...}; anything else is a result."""
    if not isinstance(output, str):
        return None
    try:
        value = json.loads(output)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or "error" not in value:
        return None
    error = value["error"]
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) else json.dumps(error)


def run_chat(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    input_stream: TextIO | None = None,
    out: TextIO | None = None,
) -> None:
    # Resolved per call rather than as default values, so a redirected sys.stdout is honoured.
    input_stream = sys.stdin if input_stream is None else input_stream
    out = sys.stdout if out is None else out
    printer = _Printer(out)
    # input() gives line editing and history, but only for the real terminal it prompts on.
    interactive = input_stream is sys.stdin and out is sys.stdout and _isatty(input_stream) and _isatty(out)
    if interactive:
        with contextlib.suppress(ImportError):
            importlib.import_module("readline")

    with OpenAI(base_url=api_base_url(base_url), api_key=api_key or API_KEY) as client:
        session = _Session(client, model, printer)
        try:
            conversation = client.conversations.create()
        except openai.APIError as exc:
            printer.note(f"[error: cannot start a conversation at {base_url}: {describe_api_error(exc)}]")
            raise SystemExit(1) from exc
        session.conversation_id = conversation.id
        printer.note(f"turnstream chat: model {model}, conversation {conversation.id}. Ctrl-D to quit.")
        printer.note(COMMANDS, dim=True)
        while True:
            line = _read_line(input_stream, printer, interactive)
            if line is None or line.strip() == QUIT:
                return
            line = line.strip()
            if line.startswith("/"):
                session.command(line)
            elif line:
                asked = _run_turn(client, session.model, session.conversation_id, line, printer)
                # A tool that needs approval: ask, and answer in the next turn (which then goes on).
                while asked:
                    answers = [_approval(request, input_stream, printer, interactive) for request in asked]
                    asked = _run_turn(client, session.model, session.conversation_id, answers, printer)

class _Session:
    """The model and conversation the next turn goes to, and the commands that change them."""

    def __init__(self, client: OpenAI, model: str, printer: _Printer) -> None:
        self.client = client
        self.model = model
        self.printer = printer
        self.conversation_id = ""

    def command(self, line: str) -> None:
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        try:
            if name == "/new" and not argument:
                self.conversation_id = self.client.conversations.create().id
                self.printer.note(f"[new conversation {self.conversation_id}]")
            elif name == "/resume" and argument:
                self._resume(argument)
            elif name == "/model" and argument:
                self._switch_model(argument)
            else:
                self.printer.note(f"[unknown command {line!r}; {COMMANDS}]")
        except openai.APIError as exc:
            self.printer.note(f"[error: {describe_api_error(exc)}]")

    def _resume(self, conversation_id: str) -> None:
        try:
            self.client.conversations.retrieve(conversation_id)
        except openai.NotFoundError:
            self.printer.note(f"[no conversation {conversation_id}; still in {self.conversation_id}]")
            return
        self.conversation_id = conversation_id
        last = self.client.conversations.items.list(conversation_id, order="desc", limit=1).data
        said = ""
        if last and last[0].type == "message":
            text = "".join(getattr(part, "text", "") or "" for part in last[0].content)
            said = f"; last message ({last[0].role}): {_clip(text, 80)}"
        self.printer.note(f"[resumed conversation {conversation_id}{said}]")

    def _switch_model(self, model: str) -> None:
        served = sorted(m.id for m in self.client.models.list())
        if served and model not in served:
            self.printer.note(f"[no model {model!r}; served: {', '.join(served)}]")
            return
        self.model = model
        self.printer.note(f"[model {model}]")


def _read_line(input_stream: TextIO, printer: _Printer, interactive: bool) -> str | None:
    """The next line, or None at end of input (Ctrl-D) or Ctrl-C at the prompt."""
    try:
        if interactive:
            line = input(PROMPT)
            printer.at_line_start = True  # the terminal echoed the Enter
            return line
        printer.write(PROMPT)
        raw = input_stream.readline()
    except (EOFError, KeyboardInterrupt):
        printer.at_line_start = False
        printer.end_line()
        return None
    if not raw:
        printer.end_line()
        return None
    line = raw.rstrip("\r\n")
    # Piped input is not echoed by a terminal; echoing it keeps the transcript a dialogue.
    printer.write(line + "\n")
    return line


def _approval(
    request: McpApprovalRequest, input_stream: TextIO, printer: _Printer, interactive: bool
) -> dict[str, object]:
    printer.note(f"[{request.server_label} wants to run {request.name}({request.arguments}); allow? y/n]")
    line = _read_line(input_stream, printer, interactive) or ""
    approve = line.strip().lower() in ("y", "yes")
    return {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": approve}


def _run_turn(
    client: OpenAI, model: str, conversation_id: str, line: str | list[dict[str, object]], printer: _Printer
) -> list[McpApprovalRequest]:
    """Streams one turn; returns the tool calls it ended waiting to have approved."""
    turn = _Turn(printer)
    try:
        items: Any = line  # a message, or the approval answers (input items the SDK types by their own TypedDicts)
        stream = client.responses.create(model=model, input=items, conversation=conversation_id, stream=True)
        with stream:
            for event in stream:
                if turn.show(event):
                    break
            else:
                printer.note("[error: the stream ended before the response finished]")
    except KeyboardInterrupt:
        # The turn runs on a worker, not in this connection: dropping the stream alone would not stop it.
        _cancel(client, turn.response_id, printer)
    except openai.APIError as exc:
        printer.note(f"[error: {describe_api_error(exc)}]")
    printer.in_text = False
    printer.end_line()
    return turn.approvals


def _cancel(client: OpenAI, response_id: str | None, printer: _Printer) -> None:
    if response_id is None:
        printer.note("[interrupted before the response started]")
        return
    try:
        response = client.responses.cancel(response_id)
    except openai.APIError as exc:
        printer.note(f"[error: could not cancel {response_id}: {describe_api_error(exc)}]")
        return
    if response.status == "cancelled":
        printer.note("[cancelled]")
    else:
        printer.note(f"[interrupted; the response is {response.status}]")
