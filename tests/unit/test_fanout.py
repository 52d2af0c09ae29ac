from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from arq.connections import ArqRedis

from api.errors import APIError
from api.fanout import Fanout
from api.sse import Frame, SSEResponse, encode, ensure_capacity
from api.subscription import Subscription
from shared import events, ids, keys
from shared.events import StreamEvent, decode_entry
from shared.models import Status
from shared.redis_conn import EmbeddedRedis
from shared.settings import Settings
from shared.stream_tail import read_after
from shared.turn_state import Retention, TurnState

SETTINGS = Settings()
GUARD_S = 3.0  # every wait is bounded: a fan-out bug fails the test instead of hanging it


@dataclass
class Harness:
    redis: ArqRedis
    state: TurnState
    fanout: Fanout

    async def new_turn(self, response_id: str | None = None) -> str:
        """A record as the API stores it, with its `response.created` event, started by a worker."""
        response_id = response_id or ids.response_id()
        await self.redis.hset(
            keys.response(response_id),
            mapping={"status": Status.QUEUED.value, "attempt": 0, "seq": -1, "request": "{}", "response": "{}"},
        )
        await self.state.append(response_id, 0, [events.lifecycle(events.CREATED, {"id": response_id})])
        await self.state.start(response_id, None)
        return response_id

    async def write(self, response_id: str, count: int, pause_s: float = 0.0) -> None:
        for i in range(count):
            await self.state.append(response_id, 1, [events.text_delta("msg_1", 0, f"{i} ")])
            await asyncio.sleep(pause_s)

    async def finish(self, response_id: str, *, compact: bool = False) -> None:
        """Commits the turn; `compact`: knowing its whole stream, as a worker does, so it is kept as one entry."""
        known = await read_after(self.redis, response_id, -1) if compact else None
        assert await self.state.finish(
            response_id,
            expect=Status.IN_PROGRESS,
            attempt=1,
            final=Status.COMPLETED,
            response={"id": response_id, "status": "completed"},
            conversation_id=None,
            items=[],
            stream=known,
        )
        if compact:
            assert await self.length(response_id) == 1

    async def produce(self, response_id: str, count: int, pause_s: float = 0.001) -> None:
        await self.write(response_id, count, pause_s)
        await self.finish(response_id)

    async def length(self, response_id: str) -> int:
        return int(await self.redis.xlen(keys.events(response_id)))

    async def collect(self, response_id: str, after_seq: int = -1) -> list[StreamEvent]:
        async with asyncio.timeout(GUARD_S):
            return [event async for event in self.fanout.events(response_id, after_seq)]


@contextlib.asynccontextmanager
async def running(**fanout_options: float) -> AsyncIterator[Harness]:
    """A started fan-out on its own embedded Redis (`fanout_options` shorten its timers), stopped after."""
    embedded = EmbeddedRedis()
    redis = embedded.client(SETTINGS)
    fanout = Fanout(redis, embedded.client(SETTINGS), **fanout_options)  # type: ignore[arg-type]
    await fanout.start()
    try:
        yield Harness(redis, TurnState(redis, Retention.from_settings(SETTINGS)), fanout)
    finally:
        async with asyncio.timeout(GUARD_S):
            await fanout.stop()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running(poll_s=0.05) as started:
        yield started


async def until_watched(fanout: Fanout, streams: int = 1) -> None:
    for _ in range(int(GUARD_S * 1000)):
        if fanout.watched >= streams:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the subscriber never registered its watch")


def fanout_tasks() -> int:
    """The fan-out's own background tasks (its reader and its ticker) still running."""
    return sum(
        1 for task in asyncio.all_tasks() if task.get_coro().__qualname__.startswith("Fanout.") and not task.done()
    )


def assert_complete(received: list[StreamEvent], first: int, last: int) -> None:
    assert [event.seq for event in received] == list(range(first, last + 1))
    assert received[-1].terminal
    assert received[-1].type == events.COMPLETED
    assert not any(event.terminal for event in received[:-1])


async def test_subscriber_before_any_live_event_gets_every_event_once_in_order(harness: Harness) -> None:
    response_id = await harness.new_turn()
    subscriber = asyncio.create_task(harness.collect(response_id))
    await until_watched(harness.fanout)

    async with asyncio.timeout(GUARD_S):
        await harness.produce(response_id, 30)
        received = await subscriber

    assert_complete(received, 0, 31)
    assert received[0].type == events.CREATED


async def test_subscriber_joining_mid_stream_gets_replay_then_live_without_gap_or_duplicate(harness: Harness) -> None:
    for pause_s in (0.001, 0.0):
        response_id = await harness.new_turn()
        await harness.write(response_id, 20)
        producer = asyncio.create_task(harness.produce(response_id, 100, pause_s))
        await asyncio.sleep(0)
        async with asyncio.timeout(GUARD_S):
            received = await harness.collect(response_id)
            await producer

        assert_complete(received, 0, 121)


async def test_subscriber_after_a_sequence_number_gets_only_later_events(harness: Harness) -> None:
    response_id = await harness.new_turn()
    await harness.write(response_id, 10)
    subscriber = asyncio.create_task(harness.collect(response_id, after_seq=5))

    async with asyncio.timeout(GUARD_S):
        await harness.produce(response_id, 10)
        received = await subscriber

    assert_complete(received, 6, 21)


async def test_subscriber_to_a_finished_response_replays_it_and_ends(harness: Harness) -> None:
    response_id = await harness.new_turn()
    await harness.produce(response_id, 5, pause_s=0)

    received = await harness.collect(response_id)

    assert_complete(received, 0, 6)
    assert received[-1].json()["response"]["status"] == "completed"


async def test_subscribers_live_when_a_turn_commits_compact_get_the_rest_once_in_order(harness: Harness) -> None:
    response_id = await harness.new_turn()
    await harness.write(response_id, 10)
    from_start = asyncio.create_task(harness.collect(response_id))
    after_five = asyncio.create_task(harness.collect(response_id, after_seq=5))
    await until_watched(harness.fanout)
    await harness.write(response_id, 10, pause_s=0.001)

    async with asyncio.timeout(GUARD_S):
        await asyncio.sleep(0.05)  # both caught up, waiting on the reader's XREAD
        await harness.finish(response_id, compact=True)
        received = await from_start, await after_five

    assert_complete(received[0], 0, 21)
    assert_complete(received[1], 6, 21)


async def test_resuming_a_compact_finished_response_after_any_event_gets_exactly_what_follows(
    harness: Harness,
) -> None:
    response_id = await harness.new_turn()
    await harness.write(response_id, 250)  # more events than one page of a replay read
    await harness.finish(response_id, compact=True)
    last = 251

    for after in (-1, 0, 1, 5, 150, 199, 200, 201, 249, last - 1):
        assert_complete(await harness.collect(response_id, after_seq=after), after + 1, last)
    assert await harness.collect(response_id, after_seq=last) == []


async def test_two_subscribers_to_one_response_both_get_everything(harness: Harness) -> None:
    response_id = await harness.new_turn()
    early = asyncio.create_task(harness.collect(response_id))
    await until_watched(harness.fanout)
    await harness.write(response_id, 30)
    producer = asyncio.create_task(harness.produce(response_id, 70))

    async with asyncio.timeout(GUARD_S):
        late = await harness.collect(response_id)
        await producer
        first = await early

    assert_complete(first, 0, 101)
    assert_complete(late, 0, 101)


async def test_subscribers_to_different_responses_get_only_their_own_events(harness: Harness) -> None:
    one, two = await harness.new_turn(), await harness.new_turn()
    subscribers = [asyncio.create_task(harness.collect(rid)) for rid in (one, two)]
    await until_watched(harness.fanout, streams=2)

    async with asyncio.timeout(GUARD_S):
        await asyncio.gather(harness.produce(one, 20), harness.produce(two, 40))
        got_one, got_two = await asyncio.gather(*subscribers)

    assert_complete(got_one, 0, 21)
    assert_complete(got_two, 0, 41)
    assert got_one[-1].json()["response"]["id"] == one
    assert got_two[-1].json()["response"]["id"] == two


async def test_watched_counts_streams_and_drops_to_zero_after_subscribers_finish(harness: Harness) -> None:
    response_id = await harness.new_turn()
    subscribers = [asyncio.create_task(harness.collect(response_id)) for _ in range(3)]
    await until_watched(harness.fanout)
    assert harness.fanout.watched == 1

    async with asyncio.timeout(GUARD_S):
        await harness.produce(response_id, 5)
        await asyncio.gather(*subscribers)

    assert harness.fanout.watched == 0


async def test_a_subscriber_that_stops_early_is_unwatched(harness: Harness) -> None:
    response_id = await harness.new_turn()
    await harness.write(response_id, 3)
    stream = harness.fanout.events(response_id)

    async with asyncio.timeout(GUARD_S):
        first = await anext(stream)
        assert harness.fanout.watched == 1
        await stream.aclose()

    assert first.seq == 0
    assert harness.fanout.watched == 0


async def test_a_rerun_is_delivered_with_its_attempt_number(harness: Harness) -> None:
    response_id = await harness.new_turn()
    subscriber = asyncio.create_task(harness.collect(response_id))
    await harness.write(response_id, 2)
    await harness.state.start(response_id, None)
    await harness.state.append(response_id, 2, [events.text_delta("msg_2", 0, "again")])

    async with asyncio.timeout(GUARD_S):
        await harness.state.finish(
            response_id,
            expect=Status.IN_PROGRESS,
            attempt=2,
            final=Status.COMPLETED,
            response={"id": response_id},
            conversation_id=None,
            items=[],
        )
        received = await subscriber

    assert [event.attempt for event in received] == [0, 1, 1, 2, 2]
    assert [event.seq for event in received] == [0, 1, 2, 3, 4]


async def test_stop_ends_the_reader_and_the_ticker_and_removes_its_wake_stream() -> None:
    embedded = EmbeddedRedis()
    redis = embedded.client(SETTINGS)
    fanout = Fanout(redis, embedded.client(SETTINGS), poll_s=0.05)
    await fanout.start()
    state = TurnState(redis, Retention.from_settings(SETTINGS))
    harness = Harness(redis, state, fanout)
    response_id = await harness.new_turn()
    subscriber = asyncio.create_task(harness.collect(response_id))
    await until_watched(fanout)
    async with asyncio.timeout(GUARD_S):
        await harness.produce(response_id, 2)
        await subscriber
    [wake_stream] = await redis.keys(keys.fanout_wake("*"))
    assert 0 < await redis.ttl(wake_stream) <= 3600  # a process that dies without stop leaves it a while only
    assert fanout_tasks() == 2

    async with asyncio.timeout(GUARD_S):
        await fanout.stop()

    assert fanout_tasks() == 0
    assert await redis.keys(keys.fanout_wake("*")) == []
    fanout.response_id("0000")  # a create that comes in while the API stops, in a partition it had no reader for
    assert fanout_tasks() == 0


async def test_subscriber_resuming_after_the_terminal_event_ends_at_once(harness: Harness) -> None:
    response_id = await harness.new_turn()
    await harness.produce(response_id, 3, pause_s=0)
    terminal_seq = await harness.length(response_id) - 1

    received = await harness.collect(response_id, after_seq=terminal_seq)

    assert received == []
    assert harness.fanout.watched == 0


async def test_subscriber_resuming_just_before_the_terminal_event_gets_only_it(harness: Harness) -> None:
    response_id = await harness.new_turn()
    await harness.produce(response_id, 3, pause_s=0)
    terminal_seq = await harness.length(response_id) - 1

    received = await harness.collect(response_id, after_seq=terminal_seq - 1)

    assert_complete(received, terminal_seq, terminal_seq)


async def test_subscriber_to_a_deleted_response_ends_at_once(harness: Harness) -> None:
    response_id = await harness.new_turn()
    await harness.write(response_id, 2)
    await harness.redis.delete(keys.response(response_id), keys.events(response_id))

    assert await harness.collect(response_id) == []
    assert harness.fanout.watched == 0


async def test_subscriber_caught_up_on_a_running_turn_waits_for_live_events(harness: Harness) -> None:
    response_id = await harness.new_turn()
    await harness.write(response_id, 3)
    subscriber = asyncio.create_task(harness.collect(response_id, after_seq=3))
    await until_watched(harness.fanout)
    assert not subscriber.done()

    async with asyncio.timeout(GUARD_S):
        await harness.produce(response_id, 2)
        received = await subscriber

    assert_complete(received, 4, 6)


# --- frames shared, no per-event work, Redis as the fallback ---------------------------------------


async def registered(subscription: Subscription) -> list[Frame]:
    """Starts the subscription (register, then replay) and returns its first batch."""
    async with asyncio.timeout(GUARD_S):
        return await anext(subscription)


async def drain(subscription: Subscription) -> list[Frame]:
    async with asyncio.timeout(GUARD_S):
        return [frame async for batch in subscription for frame in batch]


async def test_one_encoded_frame_per_live_event_is_shared_by_every_subscriber(harness: Harness) -> None:
    response_id = await harness.new_turn()
    subscriptions = [harness.fanout.subscribe(response_id) for _ in range(3)]
    for subscription in subscriptions:
        assert [frame.event.seq for frame in await registered(subscription)] == [0]

    await harness.produce(response_id, 10)
    received = [await drain(subscription) for subscription in subscriptions]

    assert [frame.event.seq for frame in received[0]] == list(range(1, 12))
    for other in received[1:]:
        assert all(mine is theirs for mine, theirs in zip(received[0], other, strict=True))
    assert received[0][0].data.startswith(b"id: 1\nevent: response.output_text.delta\ndata: {")


async def test_live_delivery_creates_no_task_per_event_or_subscriber(harness: Harness) -> None:
    response_id = await harness.new_turn()
    subscriptions = [harness.fanout.subscribe(response_id) for _ in range(20)]
    for subscription in subscriptions:
        await registered(subscription)
    consumers = [asyncio.create_task(drain(subscription)) for subscription in subscriptions]
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    created: list[str] = []

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        created.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting_factory)
    try:
        await harness.produce(response_id, 50)
        async with asyncio.timeout(GUARD_S):
            results = await asyncio.gather(*consumers)
    finally:
        loop.set_task_factory(None)

    assert all(len(frames) == 51 for frames in results)
    assert created != []  # the factory saw the in-process Redis server's own tasks
    assert [name for name in created if not name.startswith("AsyncFakeSocket.")] == []


def live_timers(loop: asyncio.AbstractEventLoop) -> int:
    # CPython's event loop keeps its timers in `_scheduled`; a timeout per waiting subscriber shows there.
    return sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]


async def test_waiting_subscribers_hold_no_timer_each(harness: Harness) -> None:
    loop = asyncio.get_running_loop()
    response_id = await harness.new_turn()
    before = live_timers(loop)
    subscriptions = [harness.fanout.subscribe(response_id) for _ in range(100)]
    for subscription in subscriptions:
        await registered(subscription)
    waiting = [asyncio.create_task(anext(subscription)) for subscription in subscriptions]
    await asyncio.sleep(0.01)

    assert live_timers(loop) - before < 5
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    for subscription in subscriptions:
        await subscription.aclose()


async def test_a_subscriber_that_falls_far_behind_reads_the_rest_from_redis_once_each(harness: Harness) -> None:
    response_id = await harness.new_turn()
    subscription = harness.fanout.subscribe(response_id)
    await registered(subscription)

    await harness.produce(response_id, 1500, pause_s=0)  # more than a subscriber holds, while it reads nothing
    received = await drain(subscription)

    assert [frame.event.seq for frame in received] == list(range(1, 1502))
    assert received[-1].event.terminal


async def test_a_gap_in_live_frames_is_filled_from_redis(harness: Harness) -> None:
    idle = Fanout(harness.redis, harness.redis)  # never started: frames arrive only when the test pushes them
    response_id = await harness.new_turn()
    subscription = idle.subscribe(response_id)
    await registered(subscription)
    await harness.write(response_id, 3)
    stored, _ = await idle.read(response_id, 0)

    subscription.push(stored[2:], b"", 0.0)  # seq 3 arrives, 1 and 2 went missing
    async with asyncio.timeout(GUARD_S):
        batch = await anext(subscription)

    assert [frame.event.seq for frame in batch] == [1, 2, 3]
    await subscription.aclose()


async def test_a_caught_up_idle_subscriber_with_a_transport_gets_frames_written_to_it(harness: Harness) -> None:
    class Transport:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def get_write_buffer_size(self) -> int:
            return 0

        def is_closing(self) -> bool:
            return False

    response_id = await harness.new_turn()
    subscription = harness.fanout.subscribe(response_id)
    transport = Transport()
    subscription.direct = transport
    await registered(subscription)
    consumer = asyncio.create_task(drain(subscription))
    await asyncio.sleep(0)

    await harness.produce(response_id, 5)
    async with asyncio.timeout(GUARD_S):
        through_consumer = await consumer

    body = b"".join(transport.written)
    assert [int(line[4:]) for line in body.split(b"\n") if line.startswith(b"id: ")] == [1, 2, 3, 4, 5]
    assert all(chunk.endswith(b"\n\n\r\n") and chunk.index(b"\r\n") < 6 for chunk in transport.written)
    assert [frame.event.seq for frame in through_consumer] == [6]  # the terminal event ends the response
    assert through_consumer[0].event.terminal


async def test_a_subscriber_whose_transport_is_backed_up_gets_frames_through_its_consumer(harness: Harness) -> None:
    class FullTransport:
        def write(self, data: bytes) -> None:
            raise AssertionError("written to a transport whose buffer is full")

        def get_write_buffer_size(self) -> int:
            return 1 << 20

        def is_closing(self) -> bool:
            return False

    response_id = await harness.new_turn()
    subscription = harness.fanout.subscribe(response_id)
    subscription.direct = FullTransport()
    await registered(subscription)
    consumer = asyncio.create_task(drain(subscription))

    await harness.produce(response_id, 5)
    async with asyncio.timeout(GUARD_S):
        received = await consumer

    assert [frame.event.seq for frame in received] == [1, 2, 3, 4, 5, 6]


async def test_an_idle_subscriber_gets_an_empty_batch_when_a_keepalive_is_due() -> None:
    async with running(keepalive_s=0.05) as harness:
        fanout = harness.fanout
        response_id = await harness.new_turn()
        subscription = fanout.subscribe(response_id)
        await registered(subscription)
        async with asyncio.timeout(GUARD_S):
            assert await anext(subscription) == []
        await harness.produce(response_id, 1)
        assert [frame.event.seq for frame in await drain(subscription)] == [1, 2]


async def test_a_consumer_blocked_past_the_stall_timeout_is_reported_once_per_tick() -> None:
    async with running(stall_timeout_s=0.05) as harness:
        fanout = harness.fanout
        response_id = await harness.new_turn()
        subscription = fanout.subscribe(response_id)
        await registered(subscription)
        stalled = asyncio.Event()
        subscription.on_stall = stalled.set
        subscription.sending_since = fanout.now()
        async with asyncio.timeout(GUARD_S):
            await stalled.wait()
        await subscription.aclose()


async def test_subscribers_of_a_response_deleted_mid_turn_end() -> None:
    async with running(check_quiet_s=0.05) as harness:
        fanout, redis = harness.fanout, harness.redis
        response_id = await harness.new_turn()
        await harness.write(response_id, 2)
        subscription = fanout.subscribe(response_id)
        assert [frame.event.seq for frame in await registered(subscription)] == [0, 1, 2]

        await redis.delete(keys.response(response_id), keys.events(response_id))

        assert await drain(subscription) == []
        assert fanout.watched == 0


async def test_a_finished_response_whose_stream_expired_replays_its_terminal_event(harness: Harness) -> None:
    response_id = await harness.new_turn()
    await harness.produce(response_id, 3, pause_s=0)
    terminal_seq = await harness.length(response_id) - 1
    await harness.redis.delete(keys.events(response_id))

    received = await harness.collect(response_id, after_seq=2)
    after_the_end = await harness.collect(response_id, after_seq=terminal_seq)

    assert [event.seq for event in received] == [terminal_seq]
    assert received[0].type == events.COMPLETED
    assert received[0].json()["response"]["status"] == "completed"
    assert received[0].json()["sequence_number"] == terminal_seq
    assert after_the_end == []


async def test_a_new_stream_past_the_cap_is_refused_with_503_and_retry_after(harness: Harness) -> None:
    harness.fanout.max_streams = 2
    response_id = await harness.new_turn()
    streams = [SSEResponse(harness.fanout, response_id), SSEResponse(harness.fanout, response_id)]

    with pytest.raises(APIError) as refused:
        ensure_capacity(harness.fanout)

    assert (refused.value.status, refused.value.code, refused.value.type) == (503, "too_many_streams", "server_error")
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    assert harness.fanout.open_streams == len(streams)


async def creators_subscription(harness: Harness, response_id: str) -> list[StreamEvent]:
    """What a create's own SSE stream reads: its first event handed over as written, then live."""
    [(_, created)] = await harness.redis.xrange(keys.events(response_id), count=1)
    written = [Frame(event, encode(event)) for event in [decode_entry(created)]]
    subscription = harness.fanout.subscribe(response_id, -1, written)
    received: list[StreamEvent] = []
    async with asyncio.timeout(GUARD_S):
        async for batch in subscription:
            received += [frame.event for frame in batch]
    return received


async def test_a_creators_stream_starts_its_watch_after_what_it_wrote_and_reads_nothing_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    read = harness.fanout.read

    async def counted(response_id: str, after_seq: int) -> tuple[list[Frame], bool]:
        reads.append(response_id)
        return await read(response_id, after_seq)

    monkeypatch.setattr(harness.fanout, "read", counted)
    response_id = await harness.new_turn()
    await harness.write(response_id, 10)  # written before the stream watches: the XREAD still returns them
    subscriber = asyncio.create_task(creators_subscription(harness, response_id))
    await until_watched(harness.fanout)

    async with asyncio.timeout(GUARD_S):
        await harness.produce(response_id, 10)
        received = await subscriber

    assert_complete(received, 0, 21)
    assert reads == []


async def test_a_creators_stream_joining_a_watch_already_reading_catches_up_from_redis(harness: Harness) -> None:
    response_id = await harness.new_turn()
    # Another client of the same response: registered, then not reading, so its watch stays.
    other = harness.fanout.subscribe(response_id)
    async with asyncio.timeout(GUARD_S):
        await other.__anext__()
    watch = harness.fanout._watches[keys.events(response_id)]
    await harness.produce(response_id, 10)
    for _ in range(int(GUARD_S * 1000)):  # the shared watch has read the whole response
        if watch.position == events.entry_id(11):
            break
        await asyncio.sleep(0.001)
    assert watch.position == events.entry_id(11)

    # Nothing live will follow: only reading Redis gets the creator's stream to its end.
    assert_complete(await creators_subscription(harness, response_id), 0, 11)
    await other.aclose()


class _Outage:
    """A reader whose reads fail `failures` times (Redis away), then block briefly and return nothing."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.reads = 0
        self.recovered = asyncio.Event()

    async def xread(self, *args: Any, **kwargs: Any) -> list[Any]:
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.reads += 1
        if self.reads <= self.failures:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        if self.reads > self.failures + 3:
            self.recovered.set()
        await asyncio.sleep(0.01)
        return []


async def test_a_redis_outage_is_logged_once_when_it_begins_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = _Outage(failures=8)
    fanout = Fanout(EmbeddedRedis().client(SETTINGS), reader, poll_s=0.001)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="api.fanout"):
        await fanout.start()
        try:
            async with asyncio.timeout(GUARD_S):
                await reader.recovered.wait()
        finally:
            await fanout.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "api.fanout"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("cannot reach Redis (Error 111") and lines[1].startswith("Redis reachable again after")


async def wakes(redis: ArqRedis) -> int:
    """Writes to the reader's wake stream so far."""
    return sum([await redis.xlen(key) for key in await redis.keys(keys.fanout_wake("*"))])


async def test_a_watch_on_a_new_response_whose_stream_the_reader_already_reads_needs_no_wake(
    harness: Harness,
) -> None:
    # The partition's first id: the reader holds the next ones from its next read on (this watch wakes it).
    first = await harness.new_turn(harness.fanout.response_id(""))
    collecting = asyncio.create_task(harness.collect(first))
    await until_watched(harness.fanout)
    await harness.produce(first, 2)
    assert len(await collecting) == 4
    woken = await wakes(harness.redis)
    assert woken == 1

    for _ in range(3):
        response_id = await harness.new_turn(harness.fanout.response_id(""))
        collecting = asyncio.create_task(harness.collect(response_id))
        await until_watched(harness.fanout)
        await harness.produce(response_id, 2)

        assert [event.seq for event in await collecting] == [0, 1, 2, 3]
    assert await wakes(harness.redis) == woken
