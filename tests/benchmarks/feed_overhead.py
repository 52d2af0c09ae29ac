"""What a conversation's live feed costs Redis: its CPU per event written, for a turn on its own (no feed),
and for a turn on a conversation (each event also copied to the feed, in the same script).

Starts its own redis-server, accepts one turn of each kind, then writes the same delta events for both,
alternating rounds, in pipelined batches as the worker's append batcher does; prints Redis CPU per event
(from /proc) for each and the difference.

    .venv/bin/python tests/benchmarks/feed_overhead.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile

from arq.connections import ArqRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from api.agent_directory import AgentDirectory
from api.auth import OPEN
from api.deps import Services
from api.turns import accept
from shared import events, ids, keys
from shared.models import TurnRequest
from shared.settings import Settings
from shared.turn_accept import TurnAcceptor
from shared.turn_state import Retention, TurnState
from tests.benchmarks.measure import cpu_seconds, free_port

BATCH = 50  # appends per pipelined round trip


async def _turn(redis: ArqRedis, svc: Services, conversation_id: str | None) -> str:
    message = {"id": ids.message_id(), "type": "message", "role": "user", "status": "completed",
               "content": [{"type": "input_text", "text": "hi"}]}
    req = TurnRequest(response_id=ids.response_id(), model="m", input=[message], conversation_id=conversation_id)
    await accept(svc, req, OPEN)
    await svc.state.start(req.response_id, conversation_id)
    return req.response_id


async def _write(state: TurnState, response_id: str, n: int) -> None:
    delta = events.text_delta("msg_1", 0, "word ")
    for start in range(0, n, BATCH):
        await state.append_many([(response_id, 1, [delta], "") for _ in range(min(BATCH, n - start))])


async def measure(port: int, server_pid: int, n: int) -> None:
    redis = ArqRedis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            await redis.ping()
            break
        except RedisConnectionError:
            await asyncio.sleep(0.05)
    settings = Settings(stream_maxlen=n * 4)
    retention = Retention.from_settings(settings)
    svc = Services(settings=settings, redis=redis, state=TurnState(redis, retention),
                   acceptor=TurnAcceptor(redis, retention, settings.queue_name, settings.max_queue_depth),
                   agents=AgentDirectory(redis, passthrough=True), fanout=None)  # type: ignore[arg-type]
    conversation_id = ids.conversation_id()
    await redis.set(keys.conversation(conversation_id), json.dumps({"id": conversation_id}))
    alone = await _turn(redis, svc, None)
    fed = await _turn(redis, svc, conversation_id)
    cpu = {alone: 0.0, fed: 0.0}
    rounds = 10
    for _ in range(rounds):
        for rid in (alone, fed):
            before = cpu_seconds(server_pid)
            await _write(svc.state, rid, n // rounds)
            cpu[rid] += cpu_seconds(server_pid) - before
    per_alone, per_fed = (cpu[alone] / n * 1e6, cpu[fed] / n * 1e6)
    feed_len = await redis.xlen(keys.conversation_feed(conversation_id))
    print(f"events per turn: {n} (batches of {BATCH}); feed entries written: {feed_len}")
    print(f"Redis CPU per event, turn on its own:      {per_alone:6.2f} us")
    print(f"Redis CPU per event, turn in conversation: {per_fed:6.2f} us  (+{per_fed - per_alone:.2f} us "
          "for the feed copy)")
    await redis.aclose()


def main(n: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            asyncio.run(measure(port, server.pid, n))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    main(parser.parse_args().events)
