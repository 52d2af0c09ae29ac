"""Tools that wait on a person: the turn ends with an `mcp_approval_request`, the next turn's
`mcp_approval_response` runs the tool (at most once, across workers and re-runs) or tells the model it was
denied; unanswered requests expire. Its own stack: workers are killed here, and the expiry is short."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.conversations import ConversationItem
from pydantic import TypeAdapter

from shared.cli.chat import run_chat
from tests.conftest import Stack
from tests.integration.conftest import TERMINAL, validated, wait_for
from tests.integration.own_stack import own_stack

APPROVAL_TIMEOUT_S = 4
ITEM = TypeAdapter(ConversationItem)


@pytest.fixture(scope="module")
def approval_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("approvals")
    env = {"TURNSTREAM_TEST_TOOL_LOG": str(root / "tool-calls.log"),
           "TURNSTREAM_APPROVAL_TIMEOUT_S": str(APPROVAL_TIMEOUT_S)}
    with own_stack(root, env, workers=1) as stack:
        yield stack


@pytest.fixture
def client(approval_stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=approval_stack.base_url, api_key="k", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture
def runs(approval_stack: Stack) -> Path:
    """The tool's log of its runs, emptied for the test."""
    log = Path(approval_stack.env["TURNSTREAM_TEST_TOOL_LOG"])
    log.write_text("")
    return log


def _ensure_worker(stack: Stack) -> None:
    if "worker-1" not in stack.procs or stack.procs["worker-1"].poll() is not None:
        stack.procs.pop("worker-1", None)
        stack.spawn("worker-1", "worker")


def _ask(client: OpenAI, conversation: str, tool: str = "record_call", arguments: str = '{"words": 2}') -> Any:
    """A turn whose model calls a tool that needs approval: it ends waiting on the client."""
    events = validated(client.responses.create(
        model="careful", input=f"call {tool}({arguments})", conversation=conversation, stream=True
    ))
    final = events[-1].response
    assert final.status == "completed"
    return final


def _answer(approve: bool, request_id: str, reason: str | None = None) -> list[dict[str, Any]]:
    answer: dict[str, Any] = {"type": "mcp_approval_response", "approval_request_id": request_id, "approve": approve}
    if reason:
        answer["reason"] = reason
    return [answer]


def _conversation_items(client: OpenAI, conversation: str) -> list[Any]:
    items = client.conversations.items.list(conversation, order="asc", limit=100).data
    for item in items:
        ITEM.validate_python(item.model_dump())  # the SDK's own conversation item union
    return items


def test_a_tool_needing_approval_runs_only_after_approval_and_exactly_once(
    client: OpenAI, runs: Path, approval_stack: Stack
) -> None:
    _ensure_worker(approval_stack)
    conv = client.conversations.create()
    asked = _ask(client, conv.id)

    [request] = asked.output
    assert request.type == "mcp_approval_request"
    assert (request.server_label, request.name, request.arguments) == ("careful", "record_call", '{"words": 2}')
    assert runs.read_text() == ""  # nothing ran yet

    events = validated(client.responses.create(
        model="careful", input=_answer(True, request.id), conversation=conv.id, stream=True
    ))
    final = events[-1].response
    assert final.status == "completed"
    run, reply = final.output
    assert reply.type == "message"
    assert (run.type, run.approval_request_id, run.output, run.error) == (
        "mcp_call", request.id, "recorded recorded", None
    )
    assert final.output_text == "Tool record_call returned: recorded recorded."
    assert runs.read_text().splitlines() == [request.id]  # once, keyed by the request
    types = [i.type for i in _conversation_items(client, conv.id)]
    assert types == ["message", "mcp_approval_request", "mcp_approval_response", "mcp_call", "message"]

    # Answering it again is refused, and nothing runs twice.
    with pytest.raises(openai.BadRequestError) as again:
        client.responses.create(model="careful", input=_answer(True, request.id), conversation=conv.id)
    assert again.value.code == "approval_already_answered"
    assert runs.read_text().splitlines() == [request.id]


def test_a_denial_reaches_the_model_and_the_tool_never_runs(client: OpenAI, runs: Path, approval_stack: Stack) -> None:
    _ensure_worker(approval_stack)
    conv = client.conversations.create()
    [request] = _ask(client, conv.id).output

    denied = validated(client.responses.create(
        model="careful", input=_answer(False, request.id, "not today"), conversation=conv.id, stream=True
    ))[-1].response

    run = denied.output[0]
    assert run.type == "mcp_call" and run.output is None
    assert run.error.content == "The user denied this tool call: not today"  # type: ignore[union-attr]
    assert denied.output_text == "The tool record_call failed (The user denied this tool call: not today), so I " \
        "cannot answer that exactly."
    assert runs.read_text() == ""


def test_the_approved_tool_runs_once_when_the_worker_dies_between_approval_and_run(
    client: OpenAI, runs: Path, approval_stack: Stack
) -> None:
    _ensure_worker(approval_stack)
    conv = client.conversations.create()
    [request] = _ask(client, conv.id).output
    approval_stack.stop("worker-1", kill=True)

    approved = client.responses.create(
        model="careful", input=_answer(True, request.id), conversation=conv.id, background=True
    )
    # No worker until the request's timeout has passed: the answer came in time (its turn was accepted within
    # it), so it stands, however late a worker gets to it.
    time.sleep(APPROVAL_TIMEOUT_S + 0.5)
    _ensure_worker(approval_stack)

    final = wait_for(client, approved.id, TERMINAL, timeout=30)
    assert final.status == "completed"
    assert final.output[0].output == "recorded recorded"  # type: ignore[union-attr]
    assert runs.read_text().splitlines() == [request.id]


def test_a_tool_whose_worker_died_while_it_ran_is_not_run_again(client: OpenAI, approval_stack: Stack) -> None:
    _ensure_worker(approval_stack)
    conv = client.conversations.create()
    [request] = _ask(client, conv.id, "slow_tool", '{"seconds": 3}').output
    approved = client.responses.create(
        model="careful", input=_answer(True, request.id), conversation=conv.id, background=True
    )
    wait_for(client, approved.id, {"in_progress"})
    time.sleep(0.5)  # the tool is running
    approval_stack.stop("worker-1", kill=True)
    _ensure_worker(approval_stack)

    final = wait_for(client, approved.id, TERMINAL, timeout=30)
    assert final.status == "completed"
    run = final.output[0]
    assert run.type == "mcp_call" and run.output is None  # type: ignore[union-attr]
    assert "interrupted" in run.error.content  # type: ignore[union-attr]
    validated(client.responses.retrieve(approved.id, stream=True))


def test_an_unanswered_request_expires_and_the_history_says_so(client: OpenAI, runs: Path,
                                                               approval_stack: Stack) -> None:
    _ensure_worker(approval_stack)
    conv = client.conversations.create()
    [request] = _ask(client, conv.id).output
    time.sleep(APPROVAL_TIMEOUT_S + 0.5)

    later = client.responses.create(model="careful", input="What is the weather in Pune?", conversation=conv.id)

    run = later.output[0]
    assert (run.type, run.approval_request_id) == ("mcp_call", request.id)  # type: ignore[union-attr]
    assert run.error.content.startswith("The approval request expired")  # type: ignore[union-attr]
    assert "mcp_call" in [i.type for i in _conversation_items(client, conv.id)]
    assert runs.read_text() == ""
    # An answer that comes too late runs nothing either.
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="careful", input=_answer(True, request.id), conversation=conv.id)


def test_an_answer_to_an_unknown_request_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="careful", input=_answer(True, "mcpr_" + "0" * 48))
    assert refused.value.param == "input[0].approval_request_id"


def test_the_chat_repl_asks_y_n_and_runs_or_skips_the_tool(approval_stack: Stack) -> None:
    _ensure_worker(approval_stack)
    out = io.StringIO()
    lines = 'call slow_tool({"seconds": 0.1})\ny\ncall slow_tool({"seconds": 0.2})\nn\n'

    run_chat(approval_stack.base_url, "careful", input_stream=io.StringIO(lines), out=out)

    text = out.getvalue()
    assert text.count('[careful wants to run slow_tool({"seconds": 0.1}); allow? y/n]') == 1
    assert "bot> Tool slow_tool returned: waited 0.1s." in text
    assert "[slow_tool not run: The user denied this tool call.]" in text
    assert "bot> The tool slow_tool failed (The user denied this tool call.)" in text


def test_an_approval_can_be_answered_through_previous_response_id(client: OpenAI, runs: Path,
                                                                   approval_stack: Stack) -> None:
    _ensure_worker(approval_stack)
    asked = client.responses.create(model="careful", input='call record_call({"words": 1})')
    [request] = asked.output

    answered = client.responses.create(
        model="careful", previous_response_id=asked.id, input=_answer(True, request.id)
    )

    assert answered.output[0].output == "recorded"  # type: ignore[union-attr]
    assert answered.output_text == "Tool record_call returned: recorded."
    assert runs.read_text().splitlines() == [request.id]
