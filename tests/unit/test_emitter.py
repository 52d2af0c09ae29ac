from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator
from typing import cast

import pytest
from arq.connections import ArqRedis
from openai.types.responses import ResponseTextDeltaEvent

from shared import events, ids, keys
from shared.events import StreamEvent, decode_entry
from shared.models import Status
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings
from shared.turn_state import Retention, StaleTurn, TurnState
from worker.emitter import Emitter
from worker.redis_retry import Outage

WINDOW = 0.05
SETTINGS = Settings()


@pytest.fixture(autouse=True)
def no_full_collection_mid_test() -> Iterator[None]:
    """The collector paused while a test runs: these tests time 50 ms windows, and a full collection of the
    test process, which holds everything the suite made before, took 0.3 s in a CI run (gc.callbacks), closing
    a window the test was about to look into."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Turn:
    """A started turn on a fresh in-process Redis, with an emitter writing to it."""

    def __init__(self, redis: ArqRedis, state: TurnState, response_id: str, attempt: int) -> None:
        self.redis = redis
        self.state = state
        self.response_id = response_id
        self.attempt = attempt
        self.cancels = 0
        self.emitter = Emitter(state, response_id, attempt, WINDOW, self._on_cancel, Outage(0.1))

    def _on_cancel(self) -> None:
        self.cancels += 1

    async def end(self) -> None:
        """Writes what the emitter hands over at the end, as the turn's commit does (here without a terminal)."""
        await self.state.append(self.response_id, self.attempt, await self.emitter.take())

    async def stored(self) -> list[StreamEvent]:
        return [decode_entry(fields) for _, fields in await self.redis.xrange(keys.events(self.response_id))]

    async def stored_count(self) -> int:
        return int(await self.redis.xlen(keys.events(self.response_id)))


@pytest.fixture
async def turn() -> Turn:
    redis = EmbeddedRedis().client(SETTINGS)
    state = TurnState(redis, Retention.from_settings(SETTINGS))
    response_id = ids.response_id()
    await redis.hset(
        keys.response(response_id),
        mapping={"status": Status.QUEUED.value, "attempt": 0, "seq": -1, "request": "{}", "response": "{}"},
    )
    started = await state.start(response_id, None)
    return Turn(redis, state, response_id, started.attempt)


def delta(text: str, item_id: str = "msg_1") -> events.Event:
    return events.text_delta(item_id, 0, text)


def texts(stored: list[StreamEvent]) -> list[str]:
    return [event.json()["delta"] for event in stored]


async def test_first_event_is_written_at_once(turn: Turn) -> None:
    await turn.emitter.emit(delta("first"))

    assert texts(await turn.stored()) == ["first"]
    assert turn.emitter.writes == 1


async def test_rapid_deltas_are_merged_into_fewer_entries_with_identical_text(turn: Turn) -> None:
    pieces = [f"t{i} " for i in range(200)]
    for piece in pieces:
        await turn.emitter.emit(delta(piece))
        await asyncio.sleep(0.0002)
    await asyncio.sleep(WINDOW * 2)

    stored = await turn.stored()
    assert 1 < len(stored) < len(pieces) / 4
    assert "".join(texts(stored)) == "".join(pieces)
    assert [event.seq for event in stored] == list(range(len(stored)))
    assert turn.emitter.writes == len(stored)


async def test_merged_delta_is_a_valid_openai_text_delta_event(turn: Turn) -> None:
    for piece in ("a", "b", "c"):
        await turn.emitter.emit(delta(piece))
    await turn.end()

    merged = (await turn.stored())[-1].json()
    parsed = ResponseTextDeltaEvent.model_validate(merged)
    assert parsed.delta == "bc"
    assert parsed.sequence_number == 1


async def test_buffered_events_reach_redis_within_the_window_unasked(turn: Turn) -> None:
    await turn.emitter.emit(delta("a"))
    await turn.emitter.emit(delta("b"))
    await turn.emitter.emit(delta("c"))
    assert await turn.stored_count() == 1

    await asyncio.sleep(WINDOW * 2)

    assert texts(await turn.stored()) == ["a", "bc"]


async def test_an_event_after_a_quiet_spell_is_written_at_once(turn: Turn) -> None:
    await turn.emitter.emit(delta("a"))
    await asyncio.sleep(WINDOW * 1.5)

    await turn.emitter.emit(delta("b"))

    assert texts(await turn.stored()) == ["a", "b"]


async def test_deltas_of_different_items_are_not_merged(turn: Turn) -> None:
    await turn.emitter.emit(delta("start", "msg_a"))
    for event in (
        delta("a1", "msg_a"),
        delta("a2", "msg_a"),
        delta("b1", "msg_b"),
        delta("a3", "msg_a"),
        events.arguments_delta("fc_1", 1, '{"x"'),
        events.arguments_delta("fc_1", 1, ":1}"),
        events.arguments_delta("fc_2", 2, "{}"),
    ):
        await turn.emitter.emit(event)
    await turn.end()

    stored = [event.json() for event in await turn.stored()]
    assert [(e["type"], e["item_id"], e["delta"]) for e in stored] == [
        ("response.output_text.delta", "msg_a", "start"),
        ("response.output_text.delta", "msg_a", "a1a2"),
        ("response.output_text.delta", "msg_b", "b1"),
        ("response.output_text.delta", "msg_a", "a3"),
        ("response.function_call_arguments.delta", "fc_1", '{"x":1}'),
        ("response.function_call_arguments.delta", "fc_2", "{}"),
    ]


async def test_text_and_argument_deltas_of_the_same_item_id_are_not_merged(turn: Turn) -> None:
    await turn.emitter.emit(delta("start"))
    await turn.emitter.emit(events.text_delta("x", 0, "text"))
    await turn.emitter.emit(events.arguments_delta("x", 0, "args"))
    await turn.end()

    stored = await turn.stored()
    assert [event.type for event in stored[1:]] == [
        "response.output_text.delta",
        "response.function_call_arguments.delta",
    ]


async def test_structural_events_keep_their_order_around_merged_deltas(turn: Turn) -> None:
    item = events.message_item("msg_1", "", "in_progress")
    done = events.message_item("msg_1", "Hello world", "completed")
    sequence = [
        events.output_item_added(0, item),
        events.content_part_added("msg_1", 0),
        delta("Hello"),
        delta(" wor"),
        delta("ld"),
        events.text_done("msg_1", 0, "Hello world"),
        events.content_part_done("msg_1", 0, "Hello world"),
        events.output_item_done(0, done),
    ]
    for event in sequence:
        await turn.emitter.emit(event)
    await turn.end()

    stored = await turn.stored()
    assert [event.type for event in stored] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert [stored[2].json()["delta"], stored[3].json()["delta"]] == ["Hello", " world"]
    assert stored[-1].json()["item"] == done


async def test_emitted_event_is_not_changed_by_later_merges(turn: Turn) -> None:
    await turn.emitter.emit(delta("start"))
    second = delta("b")
    await turn.emitter.emit(second)
    await turn.emitter.emit(delta("c"))
    await turn.end()

    assert second["delta"] == "b"
    assert texts(await turn.stored()) == ["start", "bc"]


async def test_take_hands_over_pending_events_unwritten_and_stops_the_timer(turn: Turn) -> None:
    await turn.emitter.emit(delta("a"))
    await turn.emitter.emit(delta("b"))
    await turn.emitter.emit(delta("c"))

    taken = await turn.emitter.take()

    assert [event["delta"] for event in taken] == ["bc"]
    await asyncio.sleep(WINDOW * 2)
    assert turn.emitter.writes == 1
    assert texts(await turn.stored()) == ["a"]


async def test_take_with_nothing_pending_hands_over_nothing(turn: Turn) -> None:
    assert await turn.emitter.take() == []

    assert await turn.stored_count() == 0
    assert turn.emitter.writes == 0


async def test_discard_drops_pending_events(turn: Turn) -> None:
    await turn.emitter.emit(delta("kept"))
    await turn.emitter.emit(delta("dropped"))

    turn.emitter.discard()
    await asyncio.sleep(WINDOW * 2)

    assert await turn.emitter.take() == []
    assert texts(await turn.stored()) == ["kept"]


async def test_on_cancel_fires_when_the_cancel_flag_is_set(turn: Turn) -> None:
    await turn.emitter.emit(delta("a"))
    assert turn.cancels == 0

    await turn.redis.hset(keys.response(turn.response_id), "cancel", "1")
    await asyncio.sleep(WINDOW * 1.5)
    await turn.emitter.emit(delta("b"))

    assert turn.cancels == 1


async def test_on_cancel_fires_from_a_timed_flush(turn: Turn) -> None:
    await turn.emitter.emit(delta("a"))
    await turn.redis.hset(keys.response(turn.response_id), "cancel", "1")
    await turn.emitter.emit(delta("b"))
    assert turn.cancels == 0

    await asyncio.sleep(WINDOW * 2)

    assert turn.cancels == 1


async def test_failed_timed_flush_surfaces_on_next_emit_and_take(turn: Turn) -> None:
    await turn.emitter.emit(delta("a"))
    await turn.emitter.emit(delta("b"))
    await turn.state.start(turn.response_id, None)  # a re-run takes the turn over
    await asyncio.sleep(WINDOW * 2)

    with pytest.raises(StaleTurn) as on_emit:
        await turn.emitter.emit(delta("c"))
    with pytest.raises(StaleTurn):
        await turn.emitter.take()

    assert on_emit.value.code == -2
    assert texts(await turn.stored()) == ["a"]


async def test_immediate_write_to_a_finished_turn_raises(turn: Turn) -> None:
    await turn.redis.hset(keys.response(turn.response_id), "status", "cancelled")

    with pytest.raises(StaleTurn) as raised:
        await turn.emitter.emit(delta("a"))

    assert raised.value.code == -3


async def test_stored_entry_carries_the_emitter_attempt(turn: Turn) -> None:
    await turn.emitter.emit(delta("a"))

    (entry,) = await turn.stored()
    assert entry.attempt == 1
    assert json.loads(entry.data)["sequence_number"] == 0


# --- first delta at once: a fake state that records each write and when it happened ----------------

NEVER = 3600.0  # a merge window that cannot close during a test: a write seen before take() did not wait


class RecordingState:
    """Stands in for TurnState: records every write's event types and the loop time it was made."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, list[str]]] = []

    async def append(self, response_id: str, attempt: int, batch: list[events.Event], batch_id: str = "") -> bool:
        self.writes.append((asyncio.get_running_loop().time(), [event["type"] for event in batch]))
        return False

    @property
    def batches(self) -> list[list[str]]:
        return [types for _, types in self.writes]


def recording_emitter(window_s: float) -> tuple[RecordingState, Emitter]:
    state = RecordingState()
    return state, Emitter(cast(TurnState, state), "resp_x", 1, window_s, lambda: None, Outage(0.1))


ADDED, PART, TEXT = "response.output_item.added", "response.content_part.added", "response.output_text.delta"


async def open_message(emitter: Emitter, item_id: str = "msg_1", index: int = 0) -> None:
    await emitter.emit(events.output_item_added(index, events.message_item(item_id, "", "in_progress")))
    await emitter.emit(events.content_part_added(item_id, index))


async def test_first_delta_goes_out_with_its_item_opening_in_one_write_without_waiting() -> None:
    state, emitter = recording_emitter(NEVER)
    await emitter.emit(events.lifecycle(events.IN_PROGRESS, {}))
    started = asyncio.get_running_loop().time()

    await open_message(emitter)
    assert state.batches == [[events.IN_PROGRESS]]  # the opening is held for the first delta
    await emitter.emit(delta("Hel"))

    assert state.batches == [[events.IN_PROGRESS], [ADDED, PART, TEXT]]
    written_at = state.writes[1][0]
    assert written_at - started < NEVER


async def test_deltas_after_the_first_are_merged_within_the_window() -> None:
    state, emitter = recording_emitter(NEVER)
    await open_message(emitter)
    await emitter.emit(delta("Hel"))

    for piece in ("lo", " wor", "ld"):
        await emitter.emit(delta(piece))
    assert len(state.writes) == 1

    assert [event["delta"] for event in await emitter.take()] == ["lo world"]
    assert state.batches == [[ADDED, PART, TEXT]]


async def test_first_argument_delta_of_a_function_call_goes_out_with_its_opening() -> None:
    state, emitter = recording_emitter(NEVER)
    call = events.function_call_item("fc_1", "call_1", "get_weather", "", "in_progress")

    await emitter.emit(events.output_item_added(0, call))
    await emitter.emit(events.arguments_delta("fc_1", 0, '{"city"'))

    assert state.batches == [[ADDED, "response.function_call_arguments.delta"]]


async def test_a_new_message_opened_inside_a_window_is_written_at_its_first_delta_with_what_was_pending() -> None:
    state, emitter = recording_emitter(NEVER)
    await emitter.emit(delta("a", "msg_a"))
    await emitter.emit(delta("b", "msg_a"))
    assert len(state.writes) == 1

    await open_message(emitter, "msg_b", 1)
    await emitter.emit(delta("c", "msg_b"))

    assert state.batches == [[TEXT], [TEXT, ADDED, PART, TEXT]]


async def test_an_opening_without_a_delta_is_written_when_the_window_closes() -> None:
    state, emitter = recording_emitter(WINDOW)
    result = events.function_call_output_item("fco_1", "call_1", "", "in_progress")

    await emitter.emit(events.output_item_added(2, result))
    assert state.writes == []
    await asyncio.sleep(WINDOW * 2)

    assert state.batches == [[ADDED]]


class SlowState(RecordingState):
    """A write takes `delay`; records when each one finished."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.finished: list[float] = []

    async def append(self, response_id: str, attempt: int, batch: list[events.Event], batch_id: str = "") -> bool:
        await super().append(response_id, attempt, batch, batch_id)
        await asyncio.sleep(self.delay)
        self.finished.append(asyncio.get_running_loop().time())
        return False


async def test_take_waits_for_a_timed_write_under_way_so_the_commit_lands_after_it() -> None:
    state = SlowState(delay=0.1)
    emitter = Emitter(cast(TurnState, state), "resp_x", 1, 0.2, lambda: None, Outage(0.1))
    await emitter.emit(delta("a"))  # written at once
    await emitter.emit(delta("b"))  # held for the window's end, ~0.1 s from now
    await asyncio.sleep(0.15)
    assert len(state.writes) == 2 and len(state.finished) == 1  # the timed write is under way

    taken = await emitter.take()

    assert taken == []
    assert len(state.finished) == 2


DONE = "response.output_text.done"


async def test_an_items_end_after_a_quiet_spell_is_held_for_the_commit_to_write() -> None:
    state, emitter = recording_emitter(WINDOW)
    await emitter.emit(delta("last words"))
    await asyncio.sleep(WINDOW * 1.5)

    await emitter.emit(events.text_done("msg_1", 0, "last words"))

    assert state.batches == [[TEXT]]
    assert [event["type"] for event in await emitter.take()] == [DONE]


async def test_an_items_end_is_written_when_its_window_closes_if_the_turn_goes_on() -> None:
    state, emitter = recording_emitter(WINDOW)
    await emitter.emit(delta("last words"))
    await asyncio.sleep(WINDOW * 1.5)

    await emitter.emit(events.text_done("msg_1", 0, "last words"))
    await asyncio.sleep(WINDOW * 2)

    assert state.batches == [[TEXT], [DONE]]
