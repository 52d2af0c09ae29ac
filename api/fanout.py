"""One Redis reader per API process (per partition on a cluster), fanning response events out to that
process's subscribers.

A blocking XREAD per client would pin a pooled connection each and, measured, gave p99 128 ms at 500
clients; one XREAD over every watched stream feeding in-process subscribers gave 4.4 ms.

What an event costs here is what 2,000 tails multiply: the reader decodes each entry and encodes its SSE
frame once, then hands the same bytes to every subscriber of that response. A subscriber that is caught up
and idle, and whose consumer gave it a transport (an SSE client on uvicorn), gets them written to its
socket right there: no task wakes up at all. Any other gets them appended to its pending list, and its
consumer is woken by one future. No task, timeout or timer is made per event or per subscriber; one
ticker per process sends keep-alives, drops stalled clients and notices deleted responses.

How one subscriber goes from replay to live without a gap or a duplicate is in api/subscription.py.

A new watch must be in the reader's blocking read to be served: a watch that is not makes the reader's read
end (a write to its wake stream) and start again with it, two round trips. Most watches start on a stream the
process just created, so the reader reads a few streams *before they exist*: the ids the process gives its
next new responses (`response_id`). A create's watch on one of those is in the read already, and needs no
wake; so is any watch made while the reader is between reads.

A subscription follows a response's stream, or, named by a conversation id, that conversation's live feed
(every event of its turns, numbered by the feed: see keys.conversation_feed), which never ends on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from api.sse import Frame, encode, http_chunk
from api.subscription import Subscription
from shared import events, ids, keys, metrics, response_record
from shared.events import StreamEvent
from shared.stored_form import decode_entries

log = logging.getLogger(__name__)

# Events per Redis read of a replay or refill: what a client that is not reading can make this process hold.
_PAGE = 200
_BLOCK_MS = 10_000
# Response ids a reader holds ready for its partition's next creates (see the module's doc): more than the creates
# that usually come while one read is in flight on a busy partition, few enough to add little to a read's cost.
_SPARE_IDS = 4
# A reader's wake stream outlives a process that died without deleting it by this long at most. Its expiry is
# renewed by a wake a quarter of that after the last renewal, not by every wake: one write a wake, not two.
_WAKE_TTL_S = 3600
_AFTER_CREATED = events.entry_id(0)


def is_feed(source_id: str) -> bool:
    """Whether a subscription's source is a conversation's feed rather than one response's stream."""
    return source_id.startswith(ids.CONVERSATION + "_")


def stream_key(source_id: str) -> str:
    return keys.conversation_feed(source_id) if is_feed(source_id) else keys.events(source_id)


def record_key(source_id: str) -> str:
    """The key whose absence means the source is gone (deleted or expired)."""
    return keys.conversation(source_id) if is_feed(source_id) else keys.response(source_id)


@dataclass(eq=False)
class _Watch:
    response_id: str
    position: str  # the last stream entry id the reader has seen
    part: str  # the partition (hash tag) of its stream: which reader reads it
    subscribers: set[Subscription] = field(default_factory=set)
    last_event: float = 0.0  # loop time of the last event read (or of the watch's start)


@dataclass(eq=False)
class _Reader:
    """The blocking read of one partition's watched streams (on a cluster a read may name keys of one slot
    only; on one Redis there is one partition, so one reader). It is started by the partition's first watch or
    first new response id (`Fanout.response_id`) and reads until the process stops: at most one per partition,
    never one per client."""

    part: str
    wake_key: str  # a stream of the partition's slot, written to interrupt the read when a watch is added
    wake_position: str = "0-0"
    watches: dict[str, _Watch] = field(default_factory=dict)  # by stream key
    spares: list[str] = field(default_factory=list)  # ids of responses not made yet, whose streams it reads
    reading: dict[str, str] | None = None  # the streams (and positions) of the read in flight, if one is
    wake_due: bool = False
    waking: asyncio.Task[None] | None = None
    expiry_renewed: float = float("-inf")  # loop time of the wake stream's last EXPIRE
    task: asyncio.Task[None] | None = None


class Fanout:
    def __init__(
        self,
        redis: Redis,
        reader: Redis,
        *,
        poll_s: float = 1.0,
        keepalive_s: float = 15.0,
        stall_timeout_s: float = 30.0,
        max_streams: int = 5_000,
        check_quiet_s: float = 30.0,
    ) -> None:
        """`reader` is a client of its own: the blocking read keeps its connection busy."""
        self._redis = redis
        self._reader = reader
        self._node_id = uuid.uuid4().hex
        self._watches: dict[str, _Watch] = {}
        self._readers: dict[str, _Reader] = {}  # by partition
        self._running = False
        self._tasks: list[asyncio.Task[None]] = []
        self._check: asyncio.Task[None] | None = None
        self._poll_s = poll_s
        self._down_since: float | None = None  # when the current Redis outage began, as this process saw it
        self.keepalive_s = keepalive_s
        self.stall_timeout_s = stall_timeout_s
        self.max_streams = max_streams
        # A response this quiet is checked for deletion, so that its subscribers do not wait forever.
        self._check_quiet_s = check_quiet_s
        self.open_streams = 0  # SSE responses this process is serving (api.sse keeps the count)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._tick_forever())]
        self._running = True
        self._reader_of("")  # on one Redis the one reader; on a cluster, each starts when first needed
        for reader in self._readers.values():
            self._start_reading(reader)

    def _reader_of(self, part: str) -> _Reader:
        reader = self._readers.get(part)
        if reader is None:
            reader = self._readers[part] = _Reader(part, keys.fanout_wake(self._node_id, part))
            self._start_reading(reader)
        return reader

    def response_id(self, digits: str) -> str:
        """A new response's id, in the partition `digits` names: one whose stream the partition's reader is
        likely reading already, so that a watch on it needs no wake."""
        reader = self._reader_of(keys.partition_tag(digits))
        response_id = reader.spares.pop(0) if reader.spares else ids.response_id(digits)
        while len(reader.spares) < _SPARE_IDS:  # read from the reader's next read on
            reader.spares.append(ids.response_id(digits))
        return response_id

    def _start_reading(self, reader: _Reader) -> None:
        if self._running and reader.task is None:
            reader.task = asyncio.create_task(self._read_forever(reader))

    async def stop(self) -> None:
        self._running = False  # a create or a watch that comes in while the API stops starts no reader
        for reader in self._readers.values():
            self._tasks += [t for t in (reader.task, reader.waking) if t is not None]
        if self._check is not None:
            self._tasks.append(self._check)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for reader in self._readers.values():
            with contextlib.suppress(Exception):  # Redis may be away at shutdown; the key expires anyway
                await self._redis.delete(reader.wake_key)

    @property
    def watched(self) -> int:
        return len(self._watches)

    def subscribe(self, response_id: str, after_seq: int = -1, written: list[Frame] | None = None) -> Subscription:
        """Frames of the response after `after_seq`, stored then live; registers on the first iteration.

        `written`: the response's first frames, known without reading them (its creator just wrote them).
        A conversation id follows that conversation's feed instead, after its entry `after_seq`.
        """
        return Subscription(self, response_id, after_seq, written or [], endless=is_feed(response_id))

    async def events(
        self, response_id: str, after_seq: int = -1, written: list[StreamEvent] | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Events of the response after `after_seq`, stored then live, ending after the terminal one."""
        subscription = self.subscribe(response_id, after_seq, [Frame(e, encode(e)) for e in written or ()])
        try:
            async for batch in subscription:
                for frame in batch:
                    yield frame.event
        finally:
            await subscription.aclose()

    # --- Redis ---------------------------------------------------------------------------------------

    async def read(self, response_id: str, after_seq: int) -> tuple[list[Frame], bool]:
        """Up to a page of stored frames after `after_seq`, and whether there may be more."""
        start = f"{after_seq + 1}-0"
        entries = await self._redis.xrange(stream_key(response_id), min=start, max="+", count=_PAGE)
        frames: list[Frame] = []
        for _, entry in entries:
            for event in decode_entries(entry, frames[-1].event.seq if frames else after_seq):
                frames.append(Frame(event, encode(event)))
        return frames, len(entries) == _PAGE

    async def ended_after(self, response_id: str, seq: int) -> tuple[bool, Frame | None]:
        """Whether nothing will ever follow `seq`; and the terminal frame, when the stream expired before
        the response did and `seq` is before its end (it is rebuilt from the stored Response). A conversation's
        feed ends only with its conversation."""
        if is_feed(response_id):
            return not await self._redis.exists(keys.conversation(response_id)), None
        end = await response_record.ending(self._redis, response_id)
        if end.status is None:
            return True, None  # deleted or expired: no event will ever come
        if not end.status.terminal:
            return False, None
        last = end.last_seq
        if last <= seq or end.response_json is None or await self._redis.exists(keys.events(response_id)):
            return True, None
        body = {**json.loads(end.response_json), "status": end.status.value}
        terminal = events.lifecycle(events.TERMINAL_TYPE_FOR_STATUS[end.status.value], body)
        event = StreamEvent(last, terminal["type"], 0, json.dumps({**terminal, "sequence_number": last}))
        return True, Frame(event, encode(event))

    async def watch(self, sub: Subscription, after_seq: int | None = None) -> bool:
        """Adds `sub` to its stream's watch; True if that made a new watch reading from after `after_seq`.

        The reader's XREAD returns every entry after a watch's position, also those written before the
        watch existed, so a subscriber that starts a watch at the last event it has misses nothing. One
        that joins a watch already reading may have missed what that watch read before: it reads Redis.
        """
        key = stream_key(sub.response_id)
        watch = self._watches.get(key)
        if watch is not None:
            watch.subscribers.add(sub)
            return False
        if after_seq is not None:
            position = events.entry_id(after_seq)
        else:
            newest = await self._redis.xrevrange(key, count=1)
            position = newest[0][0].decode() if newest else "0-0"
        watch = self._watches.get(key)
        if watch is not None:  # made by another subscriber meanwhile
            watch.subscribers.add(sub)
            return False
        part = keys.partition(sub.response_id)
        watch = self._watches[key] = _Watch(sub.response_id, position, part, last_event=self.now())
        watch.subscribers.add(sub)
        reader = self._reader_of(part)
        reader.watches[key] = watch
        if reader.reading is not None and reader.reading.get(key) != watch.position:
            self._wake_reader(reader)  # else the read in flight has it, or the next read will
        return True

    def _wake_reader(self, reader: _Reader) -> None:
        """Interrupts the blocking read so it includes new streams; watches made meanwhile share one wake.

        Not awaited: a watch reads from its position whenever the read includes it, so its subscriber
        loses nothing by not waiting (a create's stream sends its first events meanwhile).
        """
        reader.wake_due = True
        if reader.waking is None or reader.waking.done():
            reader.waking = asyncio.create_task(self._wake(reader))

    async def _wake(self, reader: _Reader) -> None:
        # A watch made while a wake is on its way may miss the read that wake starts: it wakes once more.
        while reader.wake_due:
            reader.wake_due = False
            renew = self.now() - reader.expiry_renewed >= _WAKE_TTL_S / 4
            try:
                if renew:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        pipe.xadd(reader.wake_key, {"w": "1"}, maxlen=16)
                        pipe.expire(reader.wake_key, _WAKE_TTL_S)
                        await pipe.execute()
                    reader.expiry_renewed = self.now()
                else:
                    await self._redis.xadd(reader.wake_key, {"w": "1"}, maxlen=16)
            except (RedisError, OSError) as exc:
                # The read fails too while Redis is away, and its retry includes every watch.
                log.warning("fan-out cannot wake its reader (%s)", exc)
                return

    def unwatch(self, sub: Subscription) -> None:
        key = stream_key(sub.response_id)
        watch = self._watches.get(key)
        if watch is not None:
            watch.subscribers.discard(sub)
            if not watch.subscribers:
                del self._watches[key]
                self._readers[watch.part].watches.pop(key, None)

    def redis_failed(self, exc: BaseException) -> None:
        """Notes a failed Redis call of this process: logged when an outage begins, not on every call."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("cannot reach Redis (%s); answering 503 until it is back", exc)

    def _redis_back(self) -> None:
        # The reader's blocking read is the one call that runs all the time: its first success ends the outage.
        if self._down_since is not None:
            log.warning("Redis reachable again after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None

    async def _read_forever(self, reader: _Reader) -> None:
        while True:
            try:
                await self._read_once(reader)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.redis_failed(exc)
                await asyncio.sleep(self._poll_s)
                continue
            except Exception:
                log.warning("fan-out read failed; retrying", exc_info=True)
                await asyncio.sleep(self._poll_s)
                continue
            self._redis_back()

    async def _read_once(self, reader: _Reader) -> None:
        streams = {reader.wake_key: reader.wake_position}
        # A spare's stream is read from after the `response.created` its accept writes, where a create's watch
        # starts (the first events a create's subscriber is handed without a read).
        streams.update({keys.events(rid): _AFTER_CREATED for rid in reader.spares})
        streams.update({key: watch.position for key, watch in reader.watches.items()})
        reader.reading = streams
        try:
            if isinstance(self._reader, RedisCluster):
                reply = await self._xread_on_node(self._reader, reader.wake_key, streams)
            else:
                reply = await self._reader.xread(streams, block=_BLOCK_MS, count=1000)  # type: ignore[arg-type]
        finally:
            reader.reading = None
        now = self.now()
        read_at = time.monotonic()
        for raw_key, entries in reply or []:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            last_id = entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0]
            if key == reader.wake_key:
                reader.wake_position = last_id
                continue
            watch = reader.watches.get(key)
            if watch is None:
                continue
            # A finished turn's compact entry holds all of it; what this watch has read before is dropped.
            seen = events.seq_at(watch.position)
            watch.position = last_id
            watch.last_event = now
            frames = []
            for _, entry in entries:
                for event in decode_entries(entry, seen):
                    frames.append(Frame(event, encode(event)))
            if not frames:
                continue
            chunk = http_chunk(frames)
            for sub in watch.subscribers:
                sub.push(frames, chunk, now)
            if watch.subscribers:
                # Read to handed over (written, or queued for a client that is not caught up), once per batch.
                metrics.fanout_delivered(read_at)

    @staticmethod
    async def _xread_on_node(cluster: RedisCluster, key: str, streams: dict[str, str]) -> Any:
        """The blocking XREAD sent to the node that owns the partition's slot. Left to route it, redis-py asks a
        node for XREAD's keys (COMMAND GETKEYS) before every read: a round trip more, always on one node. When
        the slot moves the node answers MOVED (or is gone); the client learns the new owner from that, and
        the next read goes there."""
        if not cluster.get_nodes():
            await cluster.initialize()
        node = cluster.get_node_from_key(key)
        return await cluster.execute_command(
            "XREAD", "COUNT", 1000, "BLOCK", _BLOCK_MS, "STREAMS", *streams, *streams.values(), target_nodes=node
        )

    # --- the per-process ticker ----------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        tick_s = max(0.01, min(1.0, self.keepalive_s / 2, self.stall_timeout_s / 2, self._check_quiet_s / 2))
        checked = self.now()
        while True:
            await asyncio.sleep(tick_s)
            now = self.now()
            for watch in list(self._watches.values()):
                for sub in list(watch.subscribers):
                    if sub.sending_since is not None and now - sub.sending_since > self.stall_timeout_s:
                        if sub.on_stall is not None:
                            sub.on_stall()
                    elif now - sub.last_sent >= self.keepalive_s:
                        sub.poke()
            if now - checked >= self._check_quiet_s and (self._check is None or self._check.done()):
                checked = now
                quiet = [w for w in self._watches.values() if now - w.last_event >= self._check_quiet_s]
                if quiet:
                    self._check = asyncio.create_task(self._close_deleted(quiet))

    async def _close_deleted(self, quiet: list[_Watch]) -> None:
        # A deleted (or expired) response gets no terminal event: end its subscribers rather than let them
        # wait forever. One check per quiet response, not per subscriber.
        pipe = self._redis.pipeline(transaction=False)
        for watch in quiet:
            pipe.exists(record_key(watch.response_id))
        try:
            found = await pipe.execute()
        except Exception:  # Redis away: the next round tries again
            log.warning("checking quiet responses failed", exc_info=True)
            return
        for watch, exists in zip(quiet, found, strict=True):
            if not exists:
                for sub in list(watch.subscribers):
                    sub.close()
