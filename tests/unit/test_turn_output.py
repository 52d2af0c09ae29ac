from __future__ import annotations

from typing import Any

from openai.types.conversations import ConversationItem
from openai.types.responses import ResponseOutputMessage
from pydantic import TypeAdapter

from shared import events
from worker.turn_output import TurnOutput

CLIENT_TOOLS = frozenset({"client_lookup"})
CONVERSATION_ITEMS = TypeAdapter(list[ConversationItem])


def call(call_id: str, name: str, status: str = "completed") -> dict[str, Any]:
    return events.function_call_item(f"fc_{call_id}", call_id, name, '{"q":1}' if status == "completed" else "", status)


def call_output(call_id: str, status: str = "completed") -> dict[str, Any]:
    return events.function_call_output_item(f"fco_{call_id}", call_id, "42" if status == "completed" else "", status)


def streaming_message(output: TurnOutput, item_id: str, *deltas: str) -> int:
    index = output.add(events.message_item(item_id, "", "in_progress"))
    for piece in deltas:
        output.append_text(index, piece)
    return index


def test_add_returns_output_indexes_in_order() -> None:
    output = TurnOutput()

    indexes = [output.add(events.message_item(f"msg_{i}", "x", "completed")) for i in range(3)]

    assert indexes == [0, 1, 2]
    assert [item["id"] for item in output.items] == ["msg_0", "msg_1", "msg_2"]


def test_text_bytes_counts_utf8_bytes_of_streamed_text() -> None:
    output = TurnOutput()

    streaming_message(output, "msg_1", "ab", "é", "€")

    assert output.text_bytes == 2 + 2 + 3


def test_in_progress_text_is_kept_as_an_incomplete_message() -> None:
    output = TurnOutput()
    streaming_message(output, "msg_1", "Hello", ", wor")

    (kept,) = output.settled(CLIENT_TOOLS)

    assert kept == events.message_item("msg_1", "Hello, wor", "incomplete")
    message = ResponseOutputMessage.model_validate(kept)
    assert message.status == "incomplete"
    assert message.content[0].text == "Hello, wor"


def test_in_progress_message_without_text_is_dropped() -> None:
    output = TurnOutput()
    streaming_message(output, "msg_1")

    assert output.settled(CLIENT_TOOLS) == []


def test_completed_message_is_kept_as_is_after_replace() -> None:
    output = TurnOutput()
    index = streaming_message(output, "msg_1", "Hel", "lo")
    done = events.message_item("msg_1", "Hello", "completed")

    output.replace(index, done)

    assert output.settled(CLIENT_TOOLS) == [done]


def test_server_tool_call_without_a_result_is_dropped() -> None:
    output = TurnOutput()
    output.add(call("c1", "server_search"))

    assert output.settled(CLIENT_TOOLS) == []


def test_server_tool_call_with_in_progress_result_is_dropped_with_the_result() -> None:
    output = TurnOutput()
    output.add(call("c1", "server_search"))
    output.add(call_output("c1", "in_progress"))

    assert output.settled(CLIENT_TOOLS) == []


def test_server_tool_call_with_completed_result_is_kept_with_the_result() -> None:
    output = TurnOutput()
    output.add(call("c1", "server_search"))
    output.add(call_output("c1"))

    kept = output.settled(CLIENT_TOOLS)

    assert kept == [call("c1", "server_search"), call_output("c1")]
    CONVERSATION_ITEMS.validate_python(kept)


def test_client_tool_call_is_kept_without_a_result() -> None:
    output = TurnOutput()
    output.add(call("c1", "client_lookup"))

    assert output.settled(CLIENT_TOOLS) == [call("c1", "client_lookup")]


def test_client_tool_call_still_streaming_its_arguments_is_dropped() -> None:
    output = TurnOutput()
    output.add(call("c1", "client_lookup", "in_progress"))

    assert output.settled(CLIENT_TOOLS) == []


def test_settled_keeps_order_and_drops_only_the_unfinished_parts() -> None:
    output = TurnOutput()
    first = streaming_message(output, "msg_1", "Let me look.")
    output.replace(first, events.message_item("msg_1", "Let me look.", "completed"))
    output.add(call("c1", "server_search"))
    output.add(call("c2", "server_search"))
    output.add(call("c3", "client_lookup"))
    output.add(call_output("c1"))
    output.add(call_output("c2", "in_progress"))
    streaming_message(output, "msg_2", "Found")

    kept = output.settled(CLIENT_TOOLS)

    assert [(item["type"], item.get("call_id", item["id"]), item["status"]) for item in kept] == [
        ("message", "msg_1", "completed"),
        ("function_call", "c1", "completed"),
        ("function_call", "c3", "completed"),
        ("function_call_output", "c1", "completed"),
        ("message", "msg_2", "incomplete"),
    ]
    CONVERSATION_ITEMS.validate_python(kept)


def test_settled_does_not_change_the_output_it_reads() -> None:
    output = TurnOutput()
    streaming_message(output, "msg_1", "partial")
    output.add(call("c1", "server_search"))
    before = [dict(item) for item in output.items]

    output.settled(CLIENT_TOOLS)

    assert output.items == before
