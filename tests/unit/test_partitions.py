"""Partitions on a Redis Cluster: tags whose slots are spread evenly, ids that carry them, and key names that put
every key a script touches in one slot (the slot as Redis computes it, from redis-py's own CRC16)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from shared import ids, keys, partitions


@pytest.fixture
def cluster() -> Iterator[None]:
    """Key names as a process on a cluster of 16 partitions makes them; one Redis's again afterwards."""
    partitions.configure(16)
    yield
    partitions.configure(None)


def slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.mark.parametrize("count", [1, 2, 16, 64, 1024])
def test_the_partitions_slots_are_spaced_evenly(count: int) -> None:
    width = partitions.SLOTS // count
    found = [partitions.slot(tag) for tag in partitions.tags(count)]

    assert [s // width for s in found] == list(range(count))  # one partition in each equal share of slots
    assert all(slot("{" + tag + "}") == partitions.slot(tag) for tag in partitions.tags(count))


@pytest.mark.parametrize("count", [0, 3, 12, 2048])
def test_a_partition_count_that_is_not_a_power_of_two_up_to_1024_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        partitions.tags(count)


def test_on_one_redis_names_carry_no_tag_and_ids_no_chosen_digits() -> None:
    rid = ids.response_id(partitions.for_new())

    assert keys.response(rid) == f"turnstream:response:{rid}"
    assert keys.every_partition() == [""]
    assert keys.job_id(rid) == rid
    assert keys.queue("turnstream:queue", keys.partition(rid)) == "turnstream:queue"


def test_new_ids_take_their_conversations_partition_or_the_one_a_seed_picks(cluster: None) -> None:
    conversation = ids.conversation_id(partitions.for_new())
    digits = partitions.digits_of(conversation)

    assert digits in partitions.tags(16)
    assert partitions.digits_of(ids.response_id(partitions.for_new(conversation))) == digits
    seed = "ab" * 32
    assert partitions.for_new(seed=seed) == partitions.for_new(seed=seed)
    assert ids.is_id(ids.response_id(partitions.for_new(seed=seed)), ids.RESPONSE)


def test_every_key_a_turns_scripts_touch_is_in_one_slot(cluster: None) -> None:
    conversation = ids.conversation_id(partitions.for_new())
    rid = ids.response_id(partitions.for_new(conversation))
    part = keys.partition(rid)
    job = keys.job_id(rid)
    turn_keys = [
        keys.response(rid), keys.events(rid), keys.events_scratch(rid), keys.turn_wake(rid),
        keys.conversation(conversation), keys.conversation_items(conversation), keys.conversation_turns(conversation),
        keys.conversation_feed(conversation), keys.conversation_feed_counter(conversation),
        keys.arq_job(job), keys.arq_in_progress(job), keys.arq_retry(job), keys.arq_result(job),
        keys.queue("turnstream:queue", part), keys.running_jobs(keys.queue("turnstream:queue", part)),
        keys.active_turns(part), keys.webhook_outbox(part), keys.webhook_due(part), keys.project_usage("p", part),
        keys.idempotency("p", "responses", "d" * 64, part), keys.fanout_wake("node", part),
    ]  # fmt: skip

    assert {slot(key) for key in turn_keys} == {partitions.slot(partitions.digits_of(rid))}
    assert keys.response_of_job(job) == rid


def test_an_api_keys_keys_share_a_slot_of_their_own(cluster: None) -> None:
    kid = "key_0123456789abcdef"
    found = {slot(keys.api_key(kid)), slot(keys.api_key_rpm(kid)), slot(keys.api_key_inflight(kid))}

    assert len(found) == 1


def test_new_ids_without_a_conversation_or_a_seed_take_each_partition_in_turn(cluster: None) -> None:
    picked = [partitions.for_new() for _ in range(3 * 16)]

    assert sorted(set(picked)) == sorted(partitions.tags(16))
    assert all(picked.count(tag) == 3 for tag in partitions.tags(16))
