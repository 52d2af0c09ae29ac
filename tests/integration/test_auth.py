"""Keys: every /v1 route needs one, a wrong or revoked one gets the same 401 on every node, and Redis never
holds a secret. Run against two API processes that share one Redis (tests/integration/keyed_stack.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import openai
import pytest
import redis

from shared import ids
from shared.stored_form import COMPACT_FIELD, decode_entries, unpack_json
from tests.conftest import ROOT, wait_until
from tests.integration.keyed_stack import KeyedStack, M, http

SECRET = re.compile(r"^sk-ts-[A-Za-z0-9_-]{43}$")
README_SHELL = re.findall(r"<!-- shell: keys-and-projects -->\n```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
# Fixed ids (well-formed, never issued): parametrize ids must be the same in every collecting process.
ROUTES = [
    ("POST", "/v1/responses", {"model": M, "input": "hi"}),
    ("GET", f"/v1/responses/{ids.RESPONSE}_{'0' * 48}", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/conversations", {}),
    ("GET", f"/v1/conversations/{ids.CONVERSATION}_{'0' * 48}/items", None),
]


@pytest.mark.parametrize(
    "authorization", [None, "Bearer garbage", "Bearer", "Basic dXNlcjpwYXNz", "sk-ts-no-scheme"]
)
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_v1_route_refuses_a_missing_or_wrong_key(
    keyed: KeyedStack, authorization: str | None, method: str, path: str, body: object
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    r = httpx.request(method, keyed.api_urls[0] + path, json=body, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    error = r.json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert error["param"] is None


def test_probes_need_no_key(keyed: KeyedStack) -> None:
    for node in keyed.api_urls:
        assert httpx.get(f"{node}/healthz").status_code == 200
        assert httpx.get(f"{node}/readyz").status_code == 200


def test_401_tells_nothing_about_which_ids_exist(keyed: KeyedStack) -> None:
    _, secret = keyed.key("hints")
    existing = keyed.client(secret).responses.create(model=M, input="hi", background=True).id
    missing = ids.response_id()
    answers = []
    for response_id in (existing, missing):
        r = httpx.get(f"{keyed.base_url()}/responses/{response_id}", headers={"Authorization": "Bearer wrong"})
        answers.append((r.status_code, r.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401


def test_the_sdk_sends_its_api_key_as_the_bearer_token(keyed: KeyedStack) -> None:
    _, secret = keyed.key("sdk")
    with keyed.client(secret) as client:
        assert client.responses.create(model=M, input="My name is Ravi.").status == "completed"
    with keyed.client("sk-ts-" + "x" * 43) as stranger, pytest.raises(openai.AuthenticationError) as caught:
        stranger.models.list()
    assert caught.value.code == "invalid_api_key"
    with http(keyed.api_urls[1], None) as lower:
        assert lower.get("/v1/models", headers={"Authorization": f"bearer {secret}"}).status_code == 200


@pytest.mark.parametrize("revoke_by", ["secret", "id"])
def test_a_revoked_key_is_refused_by_both_api_nodes_at_its_next_request(keyed: KeyedStack, revoke_by: str) -> None:
    secret = keyed.cli_key("revocation", "--name", f"by-{revoke_by}")
    key_id = next(k.id for k in keyed.listed() if k.name == f"by-{revoke_by}")
    nodes = [http(url, secret) for url in keyed.api_urls]
    assert [n.get("/v1/models").status_code for n in nodes] == [200, 200]
    done = keyed.cli("keys", "revoke", secret if revoke_by == "secret" else key_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"revoked {key_id} (project revocation)"
    # No node caches keys, so the very next request on each one is refused: no waiting involved.
    refused = [n.get("/v1/models") for n in nodes]
    never_existed = httpx.get(f"{keyed.base_url()}/models", headers={"Authorization": "Bearer sk-ts-never"})
    assert [r.status_code for r in refused] == [401, 401]
    assert all(r.json() == never_existed.json() for r in refused)
    for n in nodes:
        n.close()


def test_keys_create_prints_the_secret_last_and_list_never_shows_it(keyed: KeyedStack) -> None:
    done = keyed.cli("keys", "create", "--project", "listing", "--name", "web", "--rpm", "77", "--max-concurrent", "3")
    assert done.returncode == 0, done.stderr
    secret = done.stdout.splitlines()[-1]
    keyed.secrets.append(secret)
    assert SECRET.match(secret)
    assert secret not in done.stdout.splitlines()[0]
    listed = keyed.cli("keys", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if " listing " in line)
    assert row.split()[1:5] == ["listing", "web", "77", "3"]
    assert row.split()[0].startswith("key_")
    assert not any(s in listed.stdout for s in keyed.secrets)
    assert "sk-ts-" not in listed.stdout


def test_keys_cli_refuses_what_it_cannot_do(keyed: KeyedStack) -> None:
    bad_project = keyed.cli("keys", "create", "--project", "no spaces/allowed")
    assert bad_project.returncode == 2 and "--project" in bad_project.stderr
    unknown = keyed.cli("keys", "revoke", "key_00000000000000000000")
    assert unknown.returncode == 1 and "no such key" in unknown.stderr
    no_rpm = keyed.cli("keys", "create", "--project", "p", "--rpm", "0")
    assert no_rpm.returncode == 2
    no_redis = keyed.cli("keys", "list", env={"TURNSTREAM_REDIS_URL": ""})
    assert no_redis.returncode != 0


def test_keys_seeded_from_the_environment_and_a_file_follow_the_seed(keyed: KeyedStack, tmp_path: object) -> None:
    inline, filed = "sk-ts-" + ids.new_id("seed"), "sk-ts-" + ids.new_id("file")
    keyed.secrets += [inline, filed]
    path = tmp_path / "keys.json"  # type: ignore[operator]
    path.write_text(json.dumps([{"project": "filed", "secret": filed}]))
    seed = json.dumps([{"project": "seeded", "secret": inline, "name": "from-env", "rpm": 5}])
    env = {"TURNSTREAM_API_KEYS": seed, "TURNSTREAM_API_KEYS_FILE": str(path)}
    url = keyed.spawn_api("seeded-api", env)
    try:
        wait_until(lambda: http(url, inline).get("/v1/models").status_code == 200, 30, "seeded keys")
        conversation = http(url, inline).post("/v1/conversations", json={}).json()["id"]
        # Another API node, started without the seed, knows the keys too: they live in Redis.
        assert http(keyed.api_urls[0], inline).get(f"/v1/conversations/{conversation}").status_code == 200
        assert http(url, filed).get(f"/v1/conversations/{conversation}").status_code == 404
        seeded = next(k for k in keyed.listed() if k.project == "seeded")
        assert (seeded.name, seeded.rpm, seeded.seeded) == ("from-env", 5, True)
    finally:
        keyed.stack.stop("seeded-api")
    # Restarted with the inline key gone from the seed: that key is revoked, the file's key stays.
    url = keyed.spawn_api("seeded-api", {"TURNSTREAM_API_KEYS_FILE": str(path)})
    try:
        wait_until(lambda: http(url, inline).get("/v1/models").status_code == 401, 30, "the seed to apply")
        assert http(url, filed).get("/v1/models").status_code == 200
    finally:
        keyed.stack.stop("seeded-api")


def test_a_malformed_seed_stops_the_api_at_start(keyed: KeyedStack) -> None:
    url = keyed.spawn_api("badly-seeded-api", {"TURNSTREAM_API_KEYS": '[{"project": "p", "secret": "short"}]'})
    proc = keyed.stack.procs["badly-seeded-api"]
    try:
        assert proc.wait(timeout=30) != 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
    finally:
        keyed.stack.stop("badly-seeded-api")


def test_no_secret_is_stored_in_plaintext(keyed: KeyedStack) -> None:
    # Traffic of its own first, so every kind of record a key touches exists: turns, conversations,
    # idempotency claims (their header values too are stored hashed), limits, usage, a revoked key.
    secret = keyed.cli_key("scan", "--rpm", "1000", "--max-concurrent", "5")
    with keyed.client(secret) as client:
        conv = client.conversations.create(extra_headers={"Idempotency-Key": secret})
        client.responses.create(model=M, input="My name is Ravi.", conversation=conv.id)
        client.responses.create(model=M, input="hi", extra_headers={"Idempotency-Key": "k-" + secret})
    keyed.revoke(keyed.key("scan")[1])
    assert len(keyed.secrets) >= 5
    needles = [s.encode() for s in keyed.secrets] + [s.removeprefix("sk-ts-").encode() for s in keyed.secrets]
    scanned = 0
    for db in (0, 1):
        with redis.Redis.from_url(keyed.redis_url.rsplit("/", 1)[0] + f"/{db}") as r:
            for key in r.scan_iter(count=1000):
                blob = key + _dump(r, key)
                scanned += 1
                assert not [n for n in needles if n in blob], key
    assert scanned > 20


def _dump(r: redis.Redis, key: bytes) -> bytes:
    kind = r.type(key).decode()
    if kind == "string":
        return r.get(key) or b""
    if kind == "hash":
        # A finished turn's request and response are stored compressed: read as any reader would.
        return b" ".join(k + b"=" + _plain(v) for k, v in r.hgetall(key).items())
    if kind == "list":
        return b" ".join(r.lrange(key, 0, -1))
    if kind == "set":
        return b" ".join(r.smembers(key))
    if kind == "zset":
        return b" ".join(m for m, _ in r.zrange(key, 0, -1, withscores=True))
    if kind == "stream":
        return b" ".join(_entry(fields) for _, fields in r.xrange(key))
    return b""


def _entry(fields: dict[bytes, bytes]) -> bytes:
    raw = b" ".join(k + b"=" + v for k, v in fields.items())
    if COMPACT_FIELD.encode() not in fields:
        return raw
    # A finished turn's stream is one compressed entry of all its events: expanded, as a reader reads it.
    return raw + b" " + b" ".join(e.data.encode() for e in decode_entries(fields))


def _plain(value: bytes) -> bytes:
    try:
        return unpack_json(value).encode()
    except (zlib.error, UnicodeDecodeError):
        return value


def test_the_readme_keys_example_runs(keyed: KeyedStack) -> None:
    [script] = README_SHELL
    script = script.replace("redis://127.0.0.1:6379/0", keyed.redis_url)
    script = script.replace("http://127.0.0.1:8000", keyed.api_urls[0])
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={**keyed.env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    answer, end = json.JSONDecoder().raw_decode(out, out.index("{"))
    assert answer["status"] == "completed" and answer["output"][0]["content"][0]["text"] == "Nice to meet you, Ravi."
    rows = [line.split() for line in out[end:].splitlines()]
    assert any(row[1:5] == ["team-a", "web", "600", "20"] for row in rows if len(row) > 4)
    assert any(row[1:5] == ["team-b", "-", "120", "4"] for row in rows if len(row) > 4)
    assert re.search(r"^revoked key_\w+ \(project team-b\)$", out, re.M)
    assert not SECRET.search(out.replace("\n", " "))


def test_the_websocket_needs_a_key_and_its_turns_belong_to_the_key_project(keyed: KeyedStack) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = keyed.base_url().replace("http://", "ws://") + "/responses"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10)
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_api_key"

    _, owner = keyed.key("ws-owner")
    _, other = keyed.key("ws-other")
    with connect(url, open_timeout=10, additional_headers={"Authorization": f"Bearer {owner}"}) as socket:
        socket.send(json.dumps({"type": "response.create", "model": M, "input": "count to 3"}))
        created = json.loads(socket.recv(timeout=10))
    assert created["type"] == "response.created"
    response_id = created["response"]["id"]
    assert keyed.client(owner).responses.retrieve(response_id).id == response_id
    with pytest.raises(openai.NotFoundError):
        keyed.client(other).responses.retrieve(response_id)
