"""The local Redis Cluster the cluster tests run on (tests/redis_cluster.py) is a real one: three primaries
share the slot space, a cluster client's writes land on the slot's primary, and a primary killed with -9 is
replaced by its replica without losing a write that replica acknowledged, then rejoins as a replica."""

from __future__ import annotations

import time

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tests.redis_cluster import SLOTS, LocalCluster

pytestmark = pytest.mark.redis


def _write_acknowledged_by_a_replica(cluster: LocalCluster, port: int, key: str, value: str) -> None:
    # One connection for both commands: WAIT counts the replicas that have this connection's writes.
    pipe = cluster.client(port).pipeline(transaction=False)
    pipe.set(key, value)
    pipe.execute_command("WAIT", 1, 1000)
    assert pipe.execute() == [True, 1]


def test_three_primaries_each_serve_slots_and_have_a_replica(redis_cluster: LocalCluster) -> None:
    primaries = redis_cluster.primaries()
    assert len(primaries) == 3 and all(ranges for _, ranges in primaries)
    served = sorted(slot for _, ranges in primaries for lo, hi in ranges for slot in range(lo, hi + 1))
    assert served == list(range(SLOTS))

    nodes = redis_cluster.nodes()
    ids = {n.port: n.id for n in nodes}
    for port, _ in primaries:
        assert sum(n.primary_id == ids[port] for n in nodes) == 1, f"{port} has no replica"
    assert len(nodes) == 6


def test_a_cluster_client_writes_each_key_on_its_slots_primary(redis_cluster: LocalCluster) -> None:
    keys: dict[int, str] = {}  # primary port -> a key it serves
    n = 0
    while len(keys) < 3:
        key = f"harness:routing:{n}"
        keys.setdefault(redis_cluster.primary_for_slot(key_slot(key.encode())), key)
        n += 1
    with RedisCluster.from_url(redis_cluster.url, decode_responses=True) as client:
        for port, key in keys.items():
            client.set(key, port)
            assert client.get(key) == str(port)
            # Read back from that node alone: no redirection to follow.
            assert redis_cluster.client(port).get(key) == str(port)


def test_a_killed_primary_is_replaced_by_its_replica_keeping_an_acknowledged_write(
    fresh_cluster: LocalCluster,
) -> None:
    key = "harness:{failover}"
    port = fresh_cluster.primary_for_slot(key_slot(key.encode()))
    own_id = next(n.id for n in fresh_cluster.nodes() if n.port == port)
    replica = next(n.port for n in fresh_cluster.nodes() if n.primary_id == own_id)
    _write_acknowledged_by_a_replica(fresh_cluster, port, key, "kept")
    # A client that knew the old slot map, as a running service would.
    with RedisCluster.from_url(fresh_cluster.url, decode_responses=True) as client:
        assert client.get(key) == "kept"

        fresh_cluster.kill_primary(port)
        started = time.monotonic()
        successor = fresh_cluster.wait_promoted(port, timeout=30)
        promoted_in = time.monotonic() - started

        assert successor == replica, f"promoted in {promoted_in:.1f}s"
        assert fresh_cluster.primary_for_slot(key_slot(key.encode())) == replica
        assert client.get(key) == "kept"
    with RedisCluster.from_url(fresh_cluster.url, decode_responses=True) as client:
        assert client.get(key) == "kept"


def test_a_replaced_primary_restarts_as_a_replica_of_its_successor(fresh_cluster: LocalCluster) -> None:
    key = "harness:{rejoin}"
    port = fresh_cluster.primary_for_slot(key_slot(key.encode()))
    fresh_cluster.kill_primary(port)
    successor = fresh_cluster.wait_promoted(port)

    fresh_cluster.restart(port)

    nodes = {n.port: n for n in fresh_cluster.nodes()}
    assert not nodes[port].is_primary and nodes[port].primary_id == nodes[successor].id
    assert fresh_cluster.client(port).execute_command("ROLE")[0] == "slave"
    # The successor's only replica is the restarted node: it acknowledging the write proves it replicates.
    _write_acknowledged_by_a_replica(fresh_cluster, successor, key, "replicated")
    # READONLY: a replica answers reads of its primary's slots on this connection instead of redirecting.
    read = fresh_cluster.client(port).pipeline(transaction=False)
    read.execute_command("READONLY")
    read.get(key)
    assert read.execute() == [True, "replicated"]
