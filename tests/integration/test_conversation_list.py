"""`GET /v1/conversations`: a project's conversations, newest first, paged by cursor, and no one else's."""

from __future__ import annotations

from typing import Any

import httpx
import redis

from shared import keys
from tests.integration.keyed_stack import KeyedStack, http


def _list(client: httpx.Client, **params: Any) -> dict[str, Any]:
    r = client.get("/v1/conversations", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _create(client: httpx.Client, n: int) -> list[str]:
    made = []
    for i in range(n):
        r = client.post("/v1/conversations", json={"metadata": {"n": str(i)}})
        assert r.status_code == 200, r.text
        made.append(r.json()["id"])
    return made


def test_listing_pages_newest_first_with_cursor_and_metadata(keyed: KeyedStack) -> None:
    _, secret = keyed.key("list-pages")
    with http(keyed.api_urls[0], secret) as client:
        made = _create(client, 5)
        first = _list(client, limit=2)
        assert first["object"] == "list"
        assert [c["id"] for c in first["data"]] == made[::-1][:2]
        assert first["first_id"] == made[4] and first["last_id"] == made[3] and first["has_more"] is True
        assert first["data"][0]["metadata"] == {"n": "4"} and first["data"][0]["object"] == "conversation"
        assert "project" not in first["data"][0]
        rest = _list(client, limit=10, after=first["last_id"])
        assert [c["id"] for c in rest["data"]] == made[::-1][2:]
        assert rest["has_more"] is False
        oldest_first = _list(client, order="asc", limit=3)
        assert [c["id"] for c in oldest_first["data"]] == made[:3] and oldest_first["has_more"] is True


def test_another_project_lists_none_of_them(keyed: KeyedStack) -> None:
    _, owner = keyed.key("list-owner")
    _, other = keyed.key("list-other")
    with http(keyed.api_urls[0], owner) as a, http(keyed.api_urls[1], other) as b:
        made = _create(a, 2)
        assert _list(b)["data"] == []
        # Another project's id is no cursor either: the same 400 as an id that does not exist.
        r = b.get("/v1/conversations", params={"after": made[0]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "after"


def test_deleted_and_expired_conversations_leave_the_list(keyed: KeyedStack) -> None:
    _, secret = keyed.key("list-gone")
    with http(keyed.api_urls[0], secret) as client, keyed.redis() as rds:
        made = _create(client, 3)
        assert client.delete(f"/v1/conversations/{made[1]}").status_code == 200
        rds.delete(keys.conversation(made[0]))  # as its TTL would
        assert [c["id"] for c in _list(client)["data"]] == [made[2]]
        # The listing that met the expired id dropped it from the index.
        assert _index(rds, "list-gone") == [made[2]]


def test_a_page_skips_expired_entries_and_still_fills(keyed: KeyedStack) -> None:
    _, secret = keyed.key("list-fill")
    with http(keyed.api_urls[0], secret) as client, keyed.redis() as rds:
        made = _create(client, 6)
        for conversation_id in made[2:5]:
            rds.delete(keys.conversation(conversation_id))
        page = _list(client, limit=2)
        assert [c["id"] for c in page["data"]] == [made[5], made[1]] and page["has_more"] is True
        assert [c["id"] for c in _list(client, limit=2, after=made[1])["data"]] == [made[0]]


def test_bad_list_parameters_are_400s_naming_them(keyed: KeyedStack) -> None:
    _, secret = keyed.key("list-bad")
    with http(keyed.api_urls[0], secret) as client:
        for params, param in [
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "limit"),
            ({"order": "sideways"}, "order"),
            ({"after": "conv_nope"}, "after"),
            ({"after": "conv_" + "0" * 48}, "after"),
        ]:
            r = client.get("/v1/conversations", params=params)
            assert r.status_code == 400, (params, r.text)
            assert r.json()["error"]["param"] == param


def test_listing_needs_a_key(keyed: KeyedStack) -> None:
    with http(keyed.api_urls[0], None) as client:
        assert client.get("/v1/conversations").status_code == 401


def _index(rds: redis.Redis, project: str) -> list[str]:
    return [m.decode() for m in rds.zrange(keys.project_conversations(project), 0, -1, desc=True)]
