"""Folding a dead attempt's event stream back into the output a re-run continues from."""

from __future__ import annotations

from shared import events
from shared.events import StreamEvent
from worker.resume import fold
from worker.turn_output import TurnOutput


def _stream(*built: events.Event) -> list[StreamEvent]:
    out = []
    for seq, event in enumerate(built):
        body = {"sequence_number": seq, **event}
        out.append(StreamEvent(seq, event["type"], 1, events.encode(body)))
    return out


CALL = events.function_call_item("fc_1", "call_1", "get_weather", '{"city": "Paris"}', "completed")
RESULT = events.function_call_output_item("fco_1", "call_1", "Paris: 14°C", "completed")


def test_fold_keeps_finished_items_and_the_text_of_the_open_message() -> None:
    stream = _stream(
        events.lifecycle(events.CREATED, {"id": "resp_1"}),
        events.output_item_added(0, {**CALL, "arguments": "", "status": "in_progress"}),
        events.arguments_delta("fc_1", 0, '{"city": '),
        events.arguments_delta("fc_1", 0, '"Paris"}'),
        events.output_item_done(0, CALL),
        events.output_item_added(1, {**RESULT, "output": "", "status": "in_progress"}),
        events.output_item_done(1, RESULT),
        events.output_item_added(2, events.message_item("msg_1", "", "in_progress")),
        events.content_part_added("msg_1", 2),
        events.text_delta("msg_1", 2, "The weather "),
        events.text_delta("msg_1", 2, "in Paris"),
    )

    resumed = fold(stream)

    assert resumed.items[:2] == [CALL, RESULT]
    assert resumed.done == {0, 1}
    assert resumed.open() == [2]
    assert resumed.text[2] == "The weather in Paris"
    assert resumed.results() == {"call_1"}
    assert resumed.rounds() == 1


def test_fold_of_a_call_cut_mid_arguments_keeps_what_was_streamed() -> None:
    stream = _stream(
        events.output_item_added(0, {**CALL, "arguments": "", "status": "in_progress"}),
        events.arguments_delta("fc_1", 0, '{"ci'),
    )

    resumed = fold(stream)

    assert resumed.open() == [0]
    assert resumed.arguments[0] == '{"ci'
    assert resumed.results() == set()


def test_fold_ignores_events_of_an_item_it_never_saw_opened() -> None:
    resumed = fold(_stream(events.text_delta("msg_x", 3, "orphan")))

    assert not resumed
    assert resumed.text == {}


def test_restored_output_settles_the_open_message_with_its_streamed_text() -> None:
    resumed = fold(
        _stream(
            events.output_item_added(0, events.message_item("msg_1", "", "in_progress")),
            events.text_delta("msg_1", 0, "half an answ"),
        )
    )

    output = TurnOutput.restore(resumed)
    output.append_text(0, "er")

    assert output.text_bytes == len("half an answer")
    assert output.settled(frozenset()) == [events.message_item("msg_1", "half an answer", "incomplete")]


def test_fold_keeps_reasoning_and_refusal_text_and_knows_which_is_which() -> None:
    reasoning = events.reasoning_item("rs_1", "Thinking it over.", "completed")
    resumed = fold(
        _stream(
            events.output_item_added(0, events.reasoning_item("rs_1", "", "in_progress")),
            events.content_part_added("rs_1", 0, "reasoning"),
            events.part_delta("reasoning", "rs_1", 0, "Thinking it over."),
            events.output_item_done(0, reasoning),
            events.output_item_added(1, events.message_item("msg_1", "", "in_progress")),
            events.content_part_added("msg_1", 1, "refusal"),
            events.part_delta("refusal", "msg_1", 1, "I can't "),
        )
    )

    assert resumed.items[0] == reasoning and resumed.done == {0}
    assert (resumed.kind(0), resumed.kind(1)) == ("reasoning", "refusal")
    assert resumed.text == {0: "Thinking it over.", 1: "I can't "}
    assert resumed.rounds() == 0


def test_restored_output_settles_an_open_reasoning_item_with_its_streamed_text() -> None:
    resumed = fold(
        _stream(
            events.output_item_added(0, events.reasoning_item("rs_1", "", "in_progress")),
            events.part_delta("reasoning", "rs_1", 0, "Half a tho"),
        )
    )

    output = TurnOutput.restore(resumed)
    output.append_text(0, "ught", "reasoning")

    assert output.text_bytes == len("Half a thought")
    assert output.settled(frozenset()) == [events.reasoning_item("rs_1", "Half a thought", "incomplete")]
