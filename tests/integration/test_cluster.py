"""The service on a real Redis Cluster (three primaries, a replica each: tests/redis_cluster.py): the SDK's flows
end to end, keys spread over the primaries, and a primary killed under load.

Every key of a turn carries its partition's hash tag (shared/partitions.py), so each script runs in one slot;
these tests drive the same API and workers as the standalone suite, with TURNSTREAM_REDIS_URL naming one seed
node, and read the cluster directly only to check where things are.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from openai import OpenAI
from redis.cluster import RedisCluster

from shared import partitions
from shared.settings import Settings
from shared.stored_form import decode_entries
from tests.conftest import ROOT, Stack, running_stack, wait_until
from tests.integration.test_webhooks import Receiver, ReceiverServer, add_endpoint
from tests.redis_cluster import LocalCluster

MODEL = "turnstream-mock"


@dataclass
class ClusterServer:
    """A cluster as `running_stack` takes a server: its seed URL, and a client that follows the slots."""

    cluster: LocalCluster

    @property
    def url(self) -> str:
        return self.cluster.url

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url)


@pytest.fixture(scope="module")
def cluster_stack(redis_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("cluster-stack")
    with running_stack(ClusterServer(redis_cluster), root, {}) as stack:  # type: ignore[arg-type]
        yield stack


@pytest.fixture
def client(cluster_stack: Stack) -> OpenAI:
    return OpenAI(base_url=cluster_stack.base_url, api_key="test", max_retries=0, timeout=30)


def _text_of_stream(events: list[object]) -> str:
    return "".join(e.delta for e in events if getattr(e, "type", "") == "response.output_text.delta")  # type: ignore[attr-defined]


def test_the_service_detects_the_cluster_and_tags_every_turn_with_a_partition(
    client: OpenAI, redis_cluster: LocalCluster
) -> None:
    response = client.responses.create(model=MODEL, input="hello cluster")

    assert response.status == "completed" and response.output_text
    digits = partitions.digits_of(response.id)
    assert digits in partitions.tags(16)  # one of the deployment's partitions, not random digits
    cluster = RedisCluster.from_url(redis_cluster.url)
    assert cluster.exists(f"turnstream:response:{{{digits}}}{response.id}") == 1
    assert cluster.get("turnstream:partitions") == b"16"  # recorded by the first node to start


def test_a_streamed_turn_sends_exactly_the_stored_text_and_resumes_after_any_event(client: OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="count to 20", stream=True))

    response_id = events[0].response.id  # type: ignore[union-attr]
    stored = client.responses.retrieve(response_id)
    assert events[-1].type == "response.completed"
    assert _text_of_stream(events) == stored.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    resumed = list(client.responses.retrieve(response_id, stream=True, starting_after=4))
    assert [e.sequence_number for e in resumed] == list(range(5, len(events)))


def test_conversation_turns_share_their_conversations_partition_and_history_is_kept_once(client: OpenAI) -> None:
    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "seed"}])
    turns = [client.responses.create(model=MODEL, input=f"turn {n}", conversation=conversation.id) for n in range(3)]

    assert {partitions.digits_of(t.id) for t in turns} == {partitions.digits_of(conversation.id)}
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert len(items) == 1 + 2 * 3
    assert len({item.id for item in items}) == len(items)


def test_background_turns_settle_and_a_cancel_stops_one_mid_answer(client: OpenAI) -> None:
    quick = client.responses.create(model=MODEL, input="quick background", background=True)
    slow = client.responses.create(model=MODEL, input="count to 400 [delay=20ms]", background=True)
    wait_until(lambda: client.responses.retrieve(slow.id).status == "in_progress", 15, "the slow turn to start")

    cancelled = client.responses.cancel(slow.id)

    assert cancelled.status == "cancelled"
    wait_until(lambda: client.responses.retrieve(quick.id).status == "completed", 15, "the quick turn")
    events = list(client.responses.retrieve(slow.id, stream=True, starting_after=0))
    # OpenAI has no cancelled stream event: a cancelled turn's stream ends incomplete, its Response cancelled.
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"  # type: ignore[union-attr]


def test_an_idempotent_retry_finds_the_first_turn(cluster_stack: Stack) -> None:
    body = {"model": MODEL, "input": "only once", "background": True}
    headers = {"Idempotency-Key": f"cluster-{time.monotonic_ns()}"}
    first = httpx.post(f"{cluster_stack.base_url}/responses", json=body, headers=headers, timeout=30)
    again = httpx.post(f"{cluster_stack.base_url}/responses", json=body, headers=headers, timeout=30)

    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]


def test_client_tool_calls_round_trip(client: OpenAI) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}
    asked = client.responses.create(model=MODEL, input="What's the weather in Paris?", tools=[tool])  # type: ignore[list-item]
    [call] = [item for item in asked.output if item.type == "function_call"]

    answered = client.responses.create(
        model=MODEL,
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[tool],  # type: ignore[list-item]
    )

    assert answered.status == "completed" and answered.output_text


def test_the_partitions_spread_evenly_over_the_primaries(redis_cluster: LocalCluster) -> None:
    owners = Counter(redis_cluster.primary_for_slot(partitions.slot(tag)) for tag in partitions.tags(16))

    assert len(owners) == 3
    mean = 16 / 3
    assert all(abs(count - mean) / mean <= 0.25 for count in owners.values()), owners


def test_a_load_of_turns_lands_on_every_primary(client: OpenAI, redis_cluster: LocalCluster) -> None:
    conversations = [client.conversations.create().id for _ in range(24)]
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(
            lambda conv: client.responses.create(model=MODEL, input="spread", conversation=conv).status,
            conversations,
        ))

    assert done == ["completed"] * len(conversations)
    holding = [redis.Redis(port=port).dbsize() for port, _ in redis_cluster.primaries()]
    assert all(count > 0 for count in holding), holding


def test_a_killed_primary_loses_no_accepted_turn_and_strands_none(fresh_cluster: LocalCluster, tmp_path: Path) -> None:
    """kill -9 of a primary while streams and background turns run: with WAIT_REPLICAS=1 every accepted turn
    is still there after its replica's promotion and ends once, within 30 s of it, with its history once; every
    stream's text is the stored answer, numbered without a gap; the workers stay up."""
    env = {"TURNSTREAM_REDIS_WAIT_REPLICAS": "1", "TURNSTREAM_REDIS_WAIT_TIMEOUT_MS": "500"}
    answer = " ".join(str(n) for n in range(1, 61))
    with running_stack(ClusterServer(fresh_cluster), tmp_path, env, kill_at_end=True) as stack:  # type: ignore[arg-type]
        client = OpenAI(base_url=stack.base_url, api_key="test", max_retries=5, timeout=60)
        conversations = [client.conversations.create().id for _ in range(16)]
        accepted = [
            client.responses.create(
                model=MODEL, input=f"count to 60 [delay=40ms] turn {n}", conversation=conv, background=True
            ).id
            for n, conv in enumerate(conversations[:12])
        ]
        streams: dict[str, list[Any]] = {}
        errors: dict[str, Exception] = {}

        def stream(conversation: str) -> None:
            try:
                with client.responses.stream(
                    model=MODEL, input="count to 60 [delay=40ms] streamed", conversation=conversation
                ) as events:
                    streams[conversation] = list(events)
            except Exception as exc:  # reported below, not lost in its thread
                errors[conversation] = exc

        readers = [threading.Thread(target=stream, args=(conv,)) for conv in conversations[12:]]
        for reader in readers:
            reader.start()
        # The primary that holds the first turn's partition dies mid-answer.
        victim = fresh_cluster.primary_for_slot(partitions.slot(partitions.digits_of(accepted[0])))
        wait_until(lambda: client.responses.retrieve(accepted[0]).status == "in_progress", 15, "turns to run")
        fresh_cluster.kill_primary(victim)
        fresh_cluster.wait_promoted(victim)

        def all_ended() -> bool:
            return all(client.responses.retrieve(r).status in ("completed", "failed", "cancelled") for r in accepted)

        wait_until(all_ended, 30, "every accepted turn to end within 30 s of the promotion")
        for reader in readers:
            reader.join(30)
        assert {r: client.responses.retrieve(r).output_text for r in accepted} == dict.fromkeys(accepted, answer)
        assert errors == {}
        assert sorted(streams) == sorted(conversations[12:])
        for events in streams.values():
            final = events[-1]
            assert final.type == "response.completed"
            assert _text_of_stream(events) == answer == client.responses.retrieve(final.response.id).output_text
            assert [e.sequence_number for e in events] == list(range(len(events)))
        for conv in conversations:
            items = client.conversations.items.list(conv).data
            assert len(items) == 2, (conv, [i.type for i in items])  # the question and its answer, once
        assert all(proc.poll() is None for name, proc in stack.procs.items() if name.startswith("worker"))


def test_the_cli_reads_the_cluster(cluster_stack: Stack) -> None:
    for args in (["worker", "--check"], ["status", "--json"]):
        done = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "turnstream"), *args], env=cluster_stack.env, capture_output=True,
            text=True, timeout=30,
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert len(json.loads(done.stdout)["workers"]) == 2  # both workers, read from the cluster


def test_keys_projects_and_limits_hold_on_a_cluster(redis_cluster: LocalCluster, tmp_path: Path) -> None:
    """A key's concurrent-turn slots live in the key's own slot, its turns in every partition: the limit still
    holds, a finished turn gives its slot back, another project sees nothing, and usage sums the partitions."""
    alpha_secret, beta_secret = "sk-ts-alpha-" + "a" * 32, "sk-ts-beta-" + "b" * 32
    seeds = [
        {"project": "alpha", "secret": alpha_secret, "max_concurrent": 1},
        {"project": "beta", "secret": beta_secret},
    ]
    env = {"TURNSTREAM_AUTH": "on", "TURNSTREAM_API_KEYS": json.dumps(seeds), "TURNSTREAM_QUEUE_NAME": "keyed:queue"}
    with running_stack(ClusterServer(redis_cluster), tmp_path, env, workers=1) as stack:  # type: ignore[arg-type]
        alpha = OpenAI(base_url=stack.base_url, api_key=alpha_secret, max_retries=0, timeout=30)
        beta = OpenAI(base_url=stack.base_url, api_key=beta_secret, max_retries=0, timeout=30)
        slow = alpha.responses.create(model=MODEL, input="count to 400 [delay=20ms]", background=True)

        with pytest.raises(openai.RateLimitError) as refused:
            alpha.responses.create(model=MODEL, input="a second one", background=True)
        assert refused.value.code == "concurrency_limit_exceeded"
        with pytest.raises(openai.NotFoundError):
            beta.responses.retrieve(slow.id)

        alpha.responses.cancel(slow.id)
        wait_until(lambda: alpha.responses.retrieve(slow.id).status == "cancelled", 15, "the cancel")
        assert alpha.responses.create(model=MODEL, input="now there is room").status == "completed"
        for n in range(4):  # spread over partitions: usage is counted per partition and summed
            beta.responses.create(model=MODEL, input=f"beta {n}")
        listing = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "turnstream"), "keys", "list"], env=stack.env, capture_output=True,
            text=True, timeout=30, check=True,
        ).stdout
        beta_days = [line.split() for line in listing.splitlines() if line.startswith("beta ")]
        assert [int(row[2]) for row in beta_days] == [4], listing


def test_a_turn_whose_workers_are_killed_mid_stream_is_rerun_and_streamed_once(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    """kill -9 of every worker while a streamed turn runs: new workers take it over once its lease lapses, and
    the client's stream carries each piece of text once, numbered without a gap, equal to the stored answer."""
    env = {"TURNSTREAM_QUEUE_NAME": "rerun:queue", "TURNSTREAM_LEASE_S": "2"}
    with running_stack(ClusterServer(redis_cluster), tmp_path, env, kill_at_end=True) as stack:  # type: ignore[arg-type]
        client = OpenAI(base_url=stack.base_url, api_key="test", max_retries=0, timeout=60)
        events = []
        with client.responses.stream(model=MODEL, input="count to 80 [delay=30ms]") as stream:
            for event in stream:
                events.append(event)
                if len(events) == 20:
                    for name in ("worker-1", "worker-2"):
                        stack.stop(name, kill=True)
                        stack.spawn(name, "worker")
            final = stream.get_final_response()

        assert final.status == "completed"
        assert _text_of_stream(events) == final.output_text == " ".join(str(n) for n in range(1, 81))
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert client.responses.retrieve(final.id).output_text == final.output_text


def test_a_partition_resharded_mid_turn_keeps_working(fresh_cluster: LocalCluster, tmp_path: Path) -> None:
    """A conversation's slot moves to another primary (keys migrated, clients told ASK then MOVED) while its
    turn runs: the turn completes once, and the conversation's next turn runs on the new owner."""
    with running_stack(ClusterServer(fresh_cluster), tmp_path, {}) as stack:  # type: ignore[arg-type]
        client = OpenAI(base_url=stack.base_url, api_key="test", max_retries=2, timeout=60)
        conversation = client.conversations.create().id
        slot = partitions.slot(partitions.digits_of(conversation))
        source = fresh_cluster.primary_for_slot(slot)
        target = next(port for port, _ in fresh_cluster.primaries() if port != source)
        running = client.responses.create(
            model=MODEL, input="count to 60 [delay=30ms]", conversation=conversation, background=True
        )
        wait_until(lambda: client.responses.retrieve(running.id).status == "in_progress", 15, "the turn to run")

        fresh_cluster.move_slot(slot, target)

        wait_until(lambda: client.responses.retrieve(running.id).status == "completed", 30, "the moved turn")
        after = client.responses.create(model=MODEL, input="count to 3", conversation=conversation)
        assert after.status == "completed" and after.output_text == "1 2 3"
        items = client.conversations.items.list(conversation, order="asc").data
        assert len(items) == 4
        assert redis.Redis(port=target).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0


def test_webhooks_announce_turns_of_every_partition_once(redis_cluster: LocalCluster, tmp_path: Path) -> None:
    """Each partition has its own outbox, written by its turns' commits: every turn, wherever its partition,
    is announced once, signed."""
    env = {"TURNSTREAM_QUEUE_NAME": "hooks:queue", "TURNSTREAM_WEBHOOK_POLL_S": "0.05"}
    receivers = ReceiverServer()
    threading.Thread(target=receivers.serve_forever, daemon=True).start()
    try:
        with running_stack(ClusterServer(redis_cluster), tmp_path, env, workers=1) as stack:  # type: ignore[arg-type]
            receiver = Receiver()
            _, receiver.secret = add_endpoint(stack, receivers.url("cluster", receiver), "response.completed")
            client = OpenAI(base_url=stack.base_url, api_key="test", max_retries=0, timeout=30)
            turns = [client.responses.create(model=MODEL, input=f"announce {n}").id for n in range(8)]

            wait_until(lambda: len(receiver.accepted()) >= len(turns), 20, "every announcement")
            time.sleep(0.5)  # a second delivery of any of them would arrive by now
            announced = Counter(hook["data"]["id"] for hook in receiver.accepted())
            assert announced == dict.fromkeys(turns, 1)
            assert len({partitions.digits_of(t) for t in turns}) > 1  # they spread over partitions
    finally:
        receivers.shutdown()
        receivers.server_close()


def test_a_gateway_tails_a_stream_from_the_response_id_alone(client: OpenAI, redis_cluster: LocalCluster) -> None:
    """The stream contract on a cluster: the key is the id behind its own 4 digits in braces, read with any
    cluster client; its events are byte for byte what SSE clients got."""
    sse = list(client.responses.create(model=MODEL, input="count to 12", stream=True))
    response_id = sse[0].response.id  # type: ignore[union-attr]

    key = f"turnstream:events:{{{response_id[5:9]}}}{response_id}"  # resp_ + 4 digits: no partition table
    entries = RedisCluster.from_url(redis_cluster.url).xrange(key)
    stored = [event for _, fields in entries for event in decode_entries(fields)]

    assert [json.loads(event.data) for event in stored] == [e.model_dump(exclude_unset=True) for e in sse]


def test_the_client_survives_a_primary_dying_under_blocking_reads_on_every_node(fresh_cluster: LocalCluster) -> None:
    """redis-py's cluster client forgets a node as a seed when a command on it fails, and on any such failure
    closes every node's connections, which fails the commands in flight on the others too: with a blocking
    read on each primary (the fan-out's readers), one dead primary would make it forget every seed and never
    reconnect. The service's client keeps the nodes it has seen as seeds."""
    from shared.redis_conn import ClusterArqRedis

    async def scenario() -> None:
        client = ClusterArqRedis.from_url(
            fresh_cluster.url, default_queue_name="q", max_in_flight=Settings().redis_max_in_flight
        )
        owners: dict[int, str] = {}  # a partition on each primary
        for tag in partitions.tags(16):
            owners.setdefault(fresh_cluster.primary_for_slot(partitions.slot(tag)), tag)
        reads = [
            asyncio.create_task(client.xread({f"blocked{{{tag}}}": "$"}, block=20_000)) for tag in owners.values()
        ]
        await asyncio.sleep(0.5)
        victim = next(iter(owners))
        fresh_cluster.kill_primary(victim)
        await asyncio.gather(*reads, return_exceptions=True)
        await asyncio.to_thread(fresh_cluster.wait_promoted, victim)
        for _ in range(20):  # until the client has read the new layout
            try:
                await client.set(f"after{{{owners[victim]}}}", "1")
                break
            except Exception:
                await asyncio.sleep(0.5)
        assert await client.get(f"after{{{owners[victim]}}}") == b"1"
        assert [await client.set(f"k{{{tag}}}", tag) for tag in owners.values()] == [True] * len(owners)
        await client.aclose()

    asyncio.run(scenario())


def test_a_burst_of_commands_opens_no_more_connections_per_node_than_the_bound(redis_cluster: LocalCluster) -> None:
    """redis-py's node pools open a connection for every command in flight and keep it: 300 commands at once on
    one node leave ~300 connections open. The service's client keeps `max_in_flight` commands in flight; blocking
    reads do not count: more of them than the bound, blocked, hold up no command."""
    from shared.redis_conn import ClusterArqRedis

    tag = partitions.tags(16)[0]

    def connections(name: str) -> int:
        """The client's connections to the burst's node, its blocked reads' left out."""
        with redis_cluster.client(redis_cluster.primary_for_slot(partitions.slot(tag))) as node:
            return sum(1 for c in node.client_list() if c["name"] == name and c["cmd"] != "xread")

    async def burst(name: str, max_in_flight: int) -> int:
        client = ClusterArqRedis.from_url(
            redis_cluster.url, default_queue_name="q", max_in_flight=max_in_flight, client_name=name
        )
        await client.set(f"burst{{{tag}}}", "x")
        blocked = [
            asyncio.create_task(client.xread({f"bound-blocked{{{t}}}": "$"}, block=5_000))
            for t in partitions.tags(16)[:3]
        ]
        await asyncio.sleep(0.2)
        got = await asyncio.wait_for(asyncio.gather(*(client.get(f"burst{{{tag}}}") for _ in range(300))), 3)
        async with client.pipeline() as pipe:
            for _ in range(5):
                pipe.get(f"burst{{{tag}}}")
            piped = await pipe.execute()
        assert got == [b"x"] * 300 and piped == [b"x"] * 5
        assert not any(read.done() for read in blocked)  # the burst went past reads still blocked
        open_now = await asyncio.to_thread(connections, name)
        for read in blocked:
            read.cancel()
        await asyncio.gather(*blocked, return_exceptions=True)
        await client.aclose()
        return open_now

    async def scenario() -> tuple[int, int]:
        return await burst("bounded", 2), await burst("unbounded", 1_000)

    bounded, unbounded = asyncio.run(scenario())
    assert 1 <= bounded <= 2
    assert unbounded > 50  # what the bound prevents


def test_a_pipeline_redirected_under_the_bound_does_not_wait_for_itself(fresh_cluster: LocalCluster) -> None:
    """A pipeline that meets MOVED re-sends those commands one by one through the client. With one command in
    flight allowed and the pipeline holding it, they must go under the pipeline's place, not wait for another
    (which would never come)."""
    from shared.redis_conn import ClusterArqRedis

    tag = partitions.tags(16)[0]
    slot = partitions.slot(tag)
    other = next(port for port, _ in fresh_cluster.primaries() if port != fresh_cluster.primary_for_slot(slot))

    async def scenario() -> list[Any]:
        client = ClusterArqRedis.from_url(fresh_cluster.url, default_queue_name="q", max_in_flight=1)
        await client.set(f"moved{{{tag}}}", "before")
        await asyncio.to_thread(fresh_cluster.move_slot, slot, other)  # the client's slot table is now stale
        async with client.pipeline() as pipe:
            pipe.get(f"moved{{{tag}}}")
            pipe.set(f"moved{{{tag}}}", "after")
            result = await asyncio.wait_for(pipe.execute(), timeout=10)
        result.append(await client.get(f"moved{{{tag}}}"))
        await client.aclose()
        return result

    assert asyncio.run(scenario()) == [b"before", True, b"after"]
