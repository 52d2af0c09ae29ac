"""API keys and their projects: created, listed and revoked by the CLI, seeded by the API, checked per request.

A secret is "sk-ts-" + 256 random bits. Redis keeps only its sha256 (an index digest -> key id) and the
key's record; nothing can turn a record back into a secret, so a copy of Redis holds no usable key.
Revoking deletes the index entry: the next request with that secret fails on every API node, since
nodes cache nothing.

Seeding (TURNSTREAM_API_KEYS or TURNSTREAM_API_KEYS_FILE, e.g. a mounted Kubernetes Secret) takes a JSON
list of {"project", "secret", "name"?, "rpm"?, "max_concurrent"?}. Each API node applies it at start:
a seeded secret gets a key (or its limits updated), and a key seeded before whose secret has left the
list is revoked. Keys made with `turnstream keys create` are never touched by seeding.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, TypeAdapter, field_validator
from redis.asyncio import Redis

from shared import keys
from shared.redis_conn import text
from shared.settings import Settings

SECRET_PREFIX = "sk-ts-"
_MIN_SEED_SECRET_CHARS = 32  # about 190 bits even for a hex secret; shorter ones are guessable

ProjectName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
_PROJECT = TypeAdapter(ProjectName)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    # A plain hash is enough: the secrets are random, not passwords, so there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def check_project(name: str) -> str:
    """Raises ValueError unless the name is 1-64 letters, digits, '.', '_' or '-' (it is part of key names)."""
    return _PROJECT.validate_python(name)


class ApiKey(BaseModel):
    """A key's record as `keys list` shows it; never the secret."""

    id: str
    project: str
    name: str = ""
    rpm: int
    max_concurrent: int
    created: int
    last_used: int | None = None
    requests: int = 0
    seeded: bool = False
    in_flight: int = 0
    digest: str = Field(default="", repr=False)  # sha256 of the secret: finds the index entry to revoke


class SeedKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: ProjectName
    secret: SecretStr
    name: str = Field(default="", max_length=64)
    rpm: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, secret: SecretStr) -> SecretStr:
        # pydantic's own message would count "items"; a secret is counted in characters.
        length = len(secret.get_secret_value())
        if length < _MIN_SEED_SECRET_CHARS:
            raise ValueError(
                f"the secret has {length} characters; it needs at least {_MIN_SEED_SECRET_CHARS} (make one: "
                """python -c 'import secrets; print("sk-ts-" + secrets.token_urlsafe(32))')"""
            )
        return secret


_SEEDS = TypeAdapter(list[SeedKey])


def seed_from_settings(settings: Settings) -> list[SeedKey] | None:
    """The seed list configured, or None when seeding is off. Raises ValueError on a malformed list."""
    texts = []
    if settings.api_keys is not None:
        texts.append(settings.api_keys.get_secret_value())
    if settings.api_keys_file is not None:
        texts.append(settings.api_keys_file.read_text())
    # Compose and Kubernetes pass an unset optional value as an empty string: that means no seed.
    texts = [t for t in texts if t.strip()]
    if not texts:
        return None
    return [seed for text in texts for seed in _SEEDS.validate_json(text)]


@dataclass(frozen=True)
class DayUsage:
    day: date
    turns: int
    input_tokens: int
    output_tokens: int


class KeyStore:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    async def create(
        self, project: str, name: str = "", rpm: int | None = None, max_concurrent: int | None = None
    ) -> tuple[ApiKey, str]:
        """A new key; returns its record and its secret, which exists nowhere else from then on."""
        secret = new_secret()
        key = ApiKey(
            id=_new_key_id(),
            project=check_project(project),
            name=name,
            rpm=rpm or self.settings.default_key_rpm,
            max_concurrent=max_concurrent or self.settings.default_key_max_concurrent,
            created=int(time.time()),
            digest=digest(secret),
        )
        # The record, then the digest that finds it (two slots on a cluster): a record no digest names yet
        # authorizes nothing.
        await self.redis.hset(
            keys.api_key(key.id),
            mapping=key.model_dump(include={"id", "project", "name", "rpm", "max_concurrent", "created",
                                            "digest", "requests"}),
        )
        await self.redis.hset(keys.API_KEY_DIGESTS, digest(secret), key.id)
        return key, secret

    async def list_keys(self) -> list[ApiKey]:
        key_ids = sorted({v.decode() for v in await self.redis.hvals(keys.API_KEY_DIGESTS)})
        async with self.redis.pipeline(transaction=False) as pipe:
            for key_id in key_ids:
                pipe.hgetall(keys.api_key(key_id))
                pipe.zcard(keys.api_key_inflight(key_id))
            replies = await pipe.execute()
        found = []
        for record, in_flight in zip(replies[::2], replies[1::2], strict=True):
            if record:
                fields = {k.decode(): v.decode() for k, v in record.items()}
                found.append(ApiKey.model_validate({**fields, "in_flight": in_flight}))
        return sorted(found, key=lambda k: (k.project, k.created, k.id))

    async def revoke(self, secret_or_id: str) -> ApiKey | None:
        """Revokes the key with this secret or id; returns it, or None if there is none."""
        # Only a string shaped like an id is tried as one, so a secret never travels inside a key name.
        record = await self.redis.hgetall(keys.api_key(secret_or_id)) if _KEY_ID.match(secret_or_id) else {}
        if not record:
            key_id = await self.redis.hget(keys.API_KEY_DIGESTS, digest(secret_or_id))
            record = await self.redis.hgetall(keys.api_key(key_id.decode())) if key_id else {}
        if not record:
            return None
        fields = {k.decode(): v.decode() for k, v in record.items()}
        key = ApiKey.model_validate(fields)
        # The record first: from then on the key authorizes nothing (the authorize script reads it), whatever
        # happens to the digest's entry, in another slot on a cluster.
        await self.redis.delete(keys.api_key(key.id), keys.api_key_rpm(key.id), keys.api_key_inflight(key.id))
        await self.redis.hdel(keys.API_KEY_DIGESTS, key.digest)
        return key

    async def seed(self, seeds: Sequence[SeedKey]) -> None:
        """Makes the seeded keys exactly `seeds`: creates or updates each, revokes seeded keys left out."""
        wanted: set[str] = set()
        for seed in seeds:
            secret_digest = digest(seed.secret.get_secret_value())
            wanted.add(secret_digest)
            # The first seeder to name the secret gives it its id; every other (API nodes start together)
            # takes that one. Then the record: its identity once, its settings every time.
            await self.redis.hsetnx(keys.API_KEY_DIGESTS, secret_digest, _new_key_id())
            key_id = text(await self.redis.hget(keys.API_KEY_DIGESTS, secret_digest))
            record = keys.api_key(key_id)
            for field, value in (("id", key_id), ("digest", secret_digest), ("created", str(int(time.time()))),
                                 ("requests", "0")):
                await self.redis.hsetnx(record, field, value)
            await self.redis.hset(record, mapping={
                "project": seed.project,
                "name": seed.name,
                "rpm": seed.rpm or self.settings.default_key_rpm,
                "max_concurrent": seed.max_concurrent or self.settings.default_key_max_concurrent,
                "seeded": 1,
            })
        for key in await self.list_keys():
            if key.seeded and key.digest not in wanted:
                await self.revoke(key.id)

    async def usage(self, project: str, days: int) -> list[DayUsage]:
        """The project's turns and tokens on each of the last `days` UTC days that had any, newest first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in keys.every_partition():  # each partition's commits count in its own hash
                pipe.hgetall(keys.project_usage(project, part))
            found = await pipe.execute()
        counts: dict[int, dict[str, int]] = {}
        for raw in found:
            for field, value in raw.items():
                day, _, what = field.decode().partition(":")
                per_day = counts.setdefault(int(day), {})
                per_day[what] = per_day.get(what, 0) + int(value)
        today = int(time.time()) // 86_400
        epoch = date(1970, 1, 1)
        return [
            DayUsage(epoch + timedelta(days=day), c.get("turns", 0), c.get("input_tokens", 0),
                     c.get("output_tokens", 0))
            for day, c in sorted(counts.items(), reverse=True)
            if day > today - days
        ]


_KEY_ID = re.compile(r"^key_[0-9a-f]{20}$")


def _new_key_id() -> str:
    # Not a secret (it is printed, logged and stored on every turn); 80 bits keep ids distinct.
    return f"key_{secrets.token_hex(10)}"
