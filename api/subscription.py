"""One consumer's place in one response's events: replay, then live, without a gap or a duplicate.

A subscription registers with the fan-out, then replays what is already stored, then takes live frames,
dropping any it already saw: registering first is what guarantees no gap between replay and live. Redis
is the source of truth whenever the live path cannot be trusted: a subscriber that fell too far behind,
or that sees a gap in the sequence numbers, re-reads from Redis after the last event it delivered, a
page at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.fanout import Fanout
    from api.sse import Frame

_PENDING_MAX = 1_000  # frames a subscriber holds before it re-reads from Redis instead (they are shared)
_DIRECT_BUFFER_MAX = 65_536  # past asyncio's default high-water mark, writes go through the consumer again


class Subscription:
    """One consumer's place in one response's events: an async iterator of frame batches.

    A batch holds the frames that arrived since the consumer last asked, deduplicated and in order; it
    ends with the terminal frame, after which iteration stops. An empty batch means "nothing new, but a
    keep-alive is due". The fan-out reader calls `push`; the ticker calls `poke` and `on_stall`.
    """

    __slots__ = (
        "_fanout",
        "_from_redis",
        "_pending",
        "_poked",
        "_registered",
        "_waiter",
        "_written",
        "closed",
        "direct",
        "ended",
        "endless",
        "last_sent",
        "last_seq",
        "on_stall",
        "response_id",
        "sending_since",
    )

    def __init__(
        self, fanout: Fanout, response_id: str, after_seq: int, written: list[Frame], endless: bool = False
    ) -> None:
        self._fanout = fanout
        self.response_id = response_id
        self.last_seq = after_seq
        self._written = written  # the response's first frames, known without reading Redis
        self._pending: list[Frame] = []
        self._waiter: asyncio.Future[None] | None = None
        self._from_redis = False  # live frames were dropped, or a read left more: the next batch is read
        self._poked = False
        self._registered = False
        self.closed = False
        self.ended = False  # the stream ended on its own: its terminal event went out, or nothing follows
        # A conversation's feed: its turns' terminal events pass through, it ends only with the conversation.
        self.endless = endless
        self.last_sent = fanout.now()  # loop time of the last batch handed out (or keep-alive)
        self.sending_since: float | None = None  # set by a consumer while its write is blocked
        self.on_stall: Callable[[], None] | None = None
        # A transport (asyncio.WriteTransport) whose HTTP body is chunk-framed, that the reader may write
        # to itself while this subscription is caught up and its consumer idle.
        self.direct: Any = None

    # --- called by the reader and the ticker -----------------------------------------------------

    def push(self, frames: list[Frame], chunk: bytes, now: float) -> None:
        """Takes live frames, consecutive and in order; `chunk` is them as one HTTP chunk."""
        transport = self.direct
        if (
            transport is not None
            and self._waiter is not None  # the consumer is idle: nothing of ours is on its way through it
            and not self._pending
            and not self._from_redis
            and frames[0].event.seq == self.last_seq + 1
            and (self.endless or not frames[-1].event.terminal)  # the consumer ends the response
            and transport.get_write_buffer_size() < _DIRECT_BUFFER_MAX
            and not transport.is_closing()
        ):
            transport.write(chunk)
            self.last_seq = frames[-1].event.seq
            self.last_sent = now
            return
        if self._from_redis or len(self._pending) + len(frames) > _PENDING_MAX:
            self._from_redis = True
            self._pending = []
        else:
            self._pending += frames
        self._wake()

    def poke(self) -> None:
        self._poked = True
        self._wake()

    def close(self) -> None:
        """Ends the iteration at the consumer's next step (its client left, or the response is gone)."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- the consumer's side -----------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[Frame]:
        while not self.closed:
            if not self._registered:
                frames = await self._start()
            elif self._from_redis or self._gap():
                self._pending = []
                frames, self._from_redis = await self._fanout.read(self.response_id, self.last_seq)
            elif self._pending:
                frames, self._pending = self._pending, []
            elif self._poked:
                self._poked = False
                self.last_sent = self._fanout.now()
                return []
            else:
                self._waiter = self._fanout.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            batch = self._fresh(frames)
            if batch:
                self.last_sent = self._fanout.now()
                return batch
        await self.aclose()
        raise StopAsyncIteration

    async def _start(self) -> list[Frame]:
        self._registered = True
        if self._written:
            # A create's own stream: its first frames go out at once, and a watch that starts right after
            # them needs no read (see Fanout.watch); joining an older watch, what follows is read.
            frames, self._written = self._written, []
            self._from_redis = not await self._fanout.watch(self, frames[-1].event.seq)
            return frames
        await self._fanout.watch(self)
        frames, self._from_redis = await self._fanout.read(self.response_id, self.last_seq)
        if not frames:
            ended, terminal = await self._fanout.ended_after(self.response_id, self.last_seq)
            if terminal is not None:
                return [terminal]
            if ended:
                self.closed = self.ended = True  # resumed after the terminal event, or the response is gone
        return frames

    def _gap(self) -> bool:
        for frame in self._pending:
            if frame.event.seq > self.last_seq:
                return frame.event.seq > self.last_seq + 1
        return False

    def _fresh(self, frames: list[Frame]) -> list[Frame]:
        batch = [frame for frame in frames if frame.event.seq > self.last_seq]
        for i, frame in enumerate(batch):
            if frame.event.terminal and not self.endless:
                del batch[i + 1 :]
                self.closed = self.ended = True
                break
        if batch:
            self.last_seq = batch[-1].event.seq
        return batch

    async def aclose(self) -> None:
        self.closed = True
        if self._registered:
            self._registered = False
            self._fanout.unwatch(self)
