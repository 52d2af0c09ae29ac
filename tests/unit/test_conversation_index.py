"""Listing a project's conversations from its index: pages newest first, skips and prunes entries whose
conversation is gone."""

from __future__ import annotations

import json

import pytest
from arq.connections import ArqRedis

from shared import conversation_index, conversation_record, keys


async def _make(redis: ArqRedis, project: str, n: int, *, start_ms: int = 1_000) -> list[str]:
    made = []
    async with redis.pipeline(transaction=True) as pipe:
        for i in range(n):
            conversation_id = f"conv_{i:048x}"
            pipe.set(keys.conversation(conversation_id), json.dumps({"id": conversation_id, "project": project}))
            conversation_index.add(pipe, project, conversation_id, start_ms + i)
            made.append(conversation_id)
        await pipe.execute()
    return made


async def _ids(redis: ArqRedis, project: str, **kw: object) -> tuple[list[str], bool]:
    page = await conversation_record.list_page(redis, project, **kw)  # type: ignore[arg-type]
    return [c["id"] for c in page.data], page.has_more


async def test_pages_follow_each_other_in_both_orders(script_redis: ArqRedis) -> None:
    made = await _make(script_redis, "p", 5)
    assert await _ids(script_redis, "p", limit=2, order="desc", after=None) == ([made[4], made[3]], True)
    assert await _ids(script_redis, "p", limit=2, order="desc", after=made[3]) == ([made[2], made[1]], True)
    assert await _ids(script_redis, "p", limit=2, order="desc", after=made[1]) == ([made[0]], False)
    assert await _ids(script_redis, "p", limit=5, order="asc", after=made[1]) == (made[2:], False)


async def test_gone_entries_are_skipped_pruned_and_the_page_still_fills(
    script_redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conversation_record, "LIST_BATCH", 3)  # so the page needs several reads
    made = await _make(script_redis, "p", 10)
    for conversation_id in made[3:9]:
        await script_redis.delete(keys.conversation(conversation_id))
    assert await _ids(script_redis, "p", limit=3, order="desc", after=None) == ([made[9], made[2], made[1]], True)
    remaining = await script_redis.zrange(keys.project_conversations("p"), 0, -1)
    assert [m.decode() for m in remaining] == [made[0], made[1], made[2], made[9]]


async def test_a_conversation_of_another_project_is_never_listed(script_redis: ArqRedis) -> None:
    (mine,) = await _make(script_redis, "p", 1)
    # An index entry pointing at another project's conversation (it cannot happen through the API).
    await script_redis.zadd(keys.project_conversations("q"), {mine: 5})
    assert await _ids(script_redis, "q", limit=10, order="desc", after=None) == ([], False)


async def test_an_unknown_cursor_is_refused(script_redis: ArqRedis) -> None:
    await _make(script_redis, "p", 2)
    with pytest.raises(conversation_index.CursorNotFound):
        await conversation_record.list_page(script_redis, "p", limit=2, order="desc", after="conv_" + "f" * 48)


async def test_a_conversation_created_if_absent_is_listed_and_keeps_its_place(script_redis: ArqRedis) -> None:
    (older,) = await _make(script_redis, "p", 1)
    thread = {"id": "conv_" + "a" * 48, "object": "conversation", "created_at": 1, "metadata": {}}
    await conversation_record.create_if_absent(script_redis, thread, "p", ttl_s=60)
    assert await _ids(script_redis, "p", limit=10, order="desc", after=None) == ([thread["id"], older], False)
    place = await script_redis.zscore(keys.project_conversations("p"), thread["id"])
    await conversation_record.create_if_absent(script_redis, {**thread, "metadata": {"x": "y"}}, "p", ttl_s=60)
    assert await script_redis.zscore(keys.project_conversations("p"), thread["id"]) == place
    assert (await conversation_record.load(script_redis, thread["id"]) or {})["metadata"] == {}  # kept as it was

    await conversation_record.delete(script_redis, thread["id"], "p")
    assert await _ids(script_redis, "p", limit=10, order="desc", after=None) == ([older], False)


async def test_an_unlisted_existing_conversation_joins_the_list(script_redis: ArqRedis) -> None:
    thread = {"id": "conv_" + "b" * 48, "object": "conversation", "created_at": 1, "metadata": {}}
    # Stored without an index entry: made before the list existed, or a crash between the two writes.
    await script_redis.set(keys.conversation(thread["id"]), conversation_record.stored(thread, "p"))
    await conversation_record.create_if_absent(script_redis, thread, "p", ttl_s=60)
    assert await _ids(script_redis, "p", limit=10, order="desc", after=None) == ([thread["id"]], False)


async def test_a_conversation_made_again_after_it_expired_lists_as_new(script_redis: ArqRedis) -> None:
    made = await _make(script_redis, "p", 2)  # listed at 1000 and 1001 ms
    await script_redis.delete(keys.conversation(made[0]))  # expired; its entry is still in the index
    thread = {"id": made[0], "object": "conversation", "created_at": 1, "metadata": {}}
    await conversation_record.create_if_absent(script_redis, thread, "p", ttl_s=60)
    assert await _ids(script_redis, "p", limit=10, order="desc", after=None) == ([made[0], made[1]], False)
