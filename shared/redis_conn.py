"""Redis clients: one Redis or a Redis Cluster from a URL, or the embedded in-process fakeredis of the dev mode."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
from arq.connections import ArqRedis
from arq.jobs import Deserializer, Serializer
from fakeredis.aioredis import FakeAsyncRedisMixin
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.exceptions import ClusterError, RedisClusterException, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys, partitions
from shared.settings import Settings

log = logging.getLogger(__name__)

# What a call raises while Redis cannot answer for now: a dropped or refused connection, a timeout, and on a
# cluster while a primary's replica takes over, CLUSTERDOWN / MASTERDOWN (ClusterError), TRYAGAIN, and the
# client's own RedisClusterException when no node it knows answers (redis-py follows MOVED/ASK itself).
UNAVAILABLE: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterError, TryAgainError, RedisClusterException
)


# Commands that wait for something to happen (a blocking read, a pop from an empty list, replicas to confirm):
# each keeps its connection as long as it waits, so they are bounded by who issues them (a fan-out reader per
# partition, one wake pop per worker), not by `redis_max_in_flight`, which they would otherwise starve.
_BLOCKING = frozenset({"BLPOP", "BRPOP", "BLMPOP", "BLMOVE", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX", "WAIT"})


# Set while a pipeline holds its place in flight: a pipeline redirected mid-way (MOVED, ASK) re-sends those
# commands one by one through the client, and they go under the pipeline's place instead of waiting for one
# more, which could deadlock with every place held by such a pipeline.
_in_pipeline: contextvars.ContextVar[bool] = contextvars.ContextVar("in_pipeline", default=False)


def _word(arg: Any) -> str:
    # redis-py passes some of a command's words as bytes (XREAD's b"BLOCK").
    return (arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)).upper()


def _blocks(args: tuple[Any, ...]) -> bool:
    name = _word(args[0])
    if name in ("XREAD", "XREADGROUP"):
        return any(_word(arg) == "BLOCK" for arg in args[1:6])
    return name in _BLOCKING


class _FakeArqRedis(FakeAsyncRedisMixin, ArqRedis):
    """arq's client class on fakeredis' connection class: arq needs ArqRedis, fakeredis supplies the server."""


class ClusterArqRedis(RedisCluster):
    """A Redis Cluster client with what the service and arq's worker use of `ArqRedis`: its job
    (de)serializers, queue name and job expiry margin.

    redis-py (5.x) refuses a transaction on a cluster. Every multi-key write that must be atomic is a script
    of one slot (shared/lua/); what remains asks for a transaction out of habit — arq's run_job (read the
    job, count its try: the claim's lease already makes the run exclusive), the agents' card hash, key and
    conversation bookkeeping whose writes are ordered so that a partial one is harmless — and runs here as
    a pipeline, which the client groups per node.

    redis-py's node pools open a connection for every command in flight and never close it, so 500 requests at
    once would leave ~500 connections open on a node for the life of the process. Here at most
    `max_in_flight` commands (a pipeline counts as one) are in flight; more wait their turn, which on one
    node costs them next to nothing, as Redis runs commands one at a time anyway.
    """

    def __init__(self, *args: Any, default_queue_name: str, max_in_flight: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = asyncio.Semaphore(max_in_flight)
        self.job_serializer: Serializer | None = None
        self.job_deserializer: Deserializer | None = None
        self.default_queue_name = default_queue_name
        self.expires_extra_ms = 86_400_000  # arq's default
        self._seen: dict[str, ClusterNode] = dict(self.nodes_manager.startup_nodes)

    async def initialize(self) -> ClusterArqRedis:
        """redis-py's, with every node ever seen kept as a seed. On a failed command redis-py forgets that node
        as a seed and closes every node's connections, which fails the commands in flight elsewhere (the
        fan-out's blocking reads), each forgetting its node too: one dead primary could leave no seed at all,
        and the client would never reconnect ("at least one reachable node: None"). Dead seeds cost a refused
        connection each when the layout is read again."""
        if self._initialize:
            for name, node in self._seen.items():
                self.nodes_manager.startup_nodes.setdefault(name, node)
        await super().initialize()
        self._seen.update(self.nodes_manager.nodes_cache)
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if _blocks(args) or _in_pipeline.get():
            return await super().execute_command(*args, **kwargs)
        async with self.in_flight:
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        return _BoundedPipeline(self)  # type: ignore[abstract]

    async def close(self, close_connection_pool: bool | None = None) -> None:
        await self.aclose()

    async def publish(self, channel: str, message: str) -> int:
        """A classic PUBLISH, which the cluster bus carries to every node's subscribers (redis-py 5's asyncio
        cluster client has no pub/sub commands); sent to the default node, which the client replaces if it
        fails."""
        return int(await self.execute_command("PUBLISH", channel, message, target_nodes=self.DEFAULT_NODE))

    async def node_client(self, node: ClusterNode | None = None) -> Redis:
        """A plain client of one node (a random one by default), with the cluster's connection settings: for
        pub/sub, which redis-py 5's asyncio cluster client lacks (a classic PUBLISH reaches every node's
        subscribers, so any node will do)."""
        if node is None:
            if not self.get_nodes():
                await self.initialize()
            node = self.get_random_node()
        kwargs = {k: v for k, v in node.connection_kwargs.items() if k != "event_dispatcher"}
        return Redis(connection_pool=ConnectionPool(connection_class=node.connection_class, **kwargs))


class _BoundedPipeline(ClusterPipeline):
    """A cluster pipeline that counts as one command in flight (it holds a connection on each node it uses)."""

    _client: ClusterArqRedis

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        async with self._client.in_flight:
            held = _in_pipeline.set(True)
            try:
                return await super().execute(raise_on_error, allow_redirections)
            finally:
                _in_pipeline.reset(held)


class EmbeddedRedis:
    """One in-process fakeredis server; every client made from it sees the same data."""

    def __init__(self) -> None:
        self.server = fakeredis.FakeServer()

    def client(self, settings: Settings) -> ArqRedis:
        return _FakeArqRedis(server=self.server, default_queue_name=settings.queue_name)


async def connect(
    settings: Settings, embedded: EmbeddedRedis | None = None, *, away_is_one_redis: bool = False
) -> ArqRedis:
    """A client for the service's Redis. On a cluster (TURNSTREAM_REDIS_CLUSTER, or asked of the server) the
    process's keys take their partitions' hash tags from here on (shared/partitions.py).

    A server that cannot be asked raises what it raised (the worker waits for it, a CLI command says so in one
    line), unless `away_is_one_redis`: an API node starts while Redis is away, to answer 503 meanwhile, and
    takes it for one Redis, saying so (set TURNSTREAM_REDIS_CLUSTER where that guess could be wrong)."""
    if settings.redis_url is None:
        if embedded is None:
            raise RuntimeError(
                "TURNSTREAM_REDIS_URL is not set; only `turnstream dev` can run on the embedded Redis"
            )
        partitions.configure(None)
        return embedded.client(settings)
    try:
        cluster = await is_cluster(settings)
    except (RedisError, RedisClusterException) as exc:  # away, or refusing this client (a password)
        if not away_is_one_redis:
            raise
        log.warning(
            "cannot ask Redis whether it is a cluster (%s); running as on one Redis. "
            "Set TURNSTREAM_REDIS_CLUSTER=true|false to say.", exc,
        )
        cluster = False
    if cluster:
        partitions.configure(settings.partitions)
        client = ClusterArqRedis.from_url(
            settings.redis_url,
            default_queue_name=settings.queue_name,
            max_in_flight=settings.redis_max_in_flight,
            socket_connect_timeout=2,
        )
        await _check_partitions(client, settings.partitions)
        return client  # type: ignore[return-value]
    partitions.configure(None)
    # No ping here: an API node starts while Redis is away, answers 503 meanwhile, and recovers by itself.
    pool = ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=2, health_check_interval=30)
    return ArqRedis(pool, default_queue_name=settings.queue_name)


async def is_cluster(settings: Settings) -> bool:
    """TURNSTREAM_REDIS_CLUSTER, or else whether the server says `cluster_enabled:1`."""
    if settings.redis_cluster is not None:
        return settings.redis_cluster
    assert settings.redis_url is not None
    probe = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    return bool(int(info.get("cluster_enabled", 0)))


async def _check_partitions(cluster: RedisCluster, count: int) -> None:
    """The first node to start records the partition count; every later one must have the same, or the turns
    of partitions it does not know would wait on queues no worker of its reads."""
    try:
        await cluster.set(keys.PARTITIONS, count, nx=True)
        recorded = int(await cluster.get(keys.PARTITIONS) or count)
    except RedisError as exc:
        log.warning("cannot check TURNSTREAM_PARTITIONS against the cluster's (%s); checked on the next start", exc)
        return
    if recorded != count:
        raise RuntimeError(
            f"TURNSTREAM_PARTITIONS={count}, but this cluster's data was written with {recorded} partitions; "
            f"set TURNSTREAM_PARTITIONS={recorded} (it is fixed for the life of the data)"
        )


@contextlib.asynccontextmanager
async def subscription(redis: Redis, channel: str) -> AsyncIterator[PubSub]:
    """A subscription to `channel`: on the client itself on one Redis; on a cluster on a plain client of one
    node, made for it (so a resubscription after a node's failure goes to a live one) and closed with it."""
    client = await redis.node_client() if isinstance(redis, ClusterArqRedis) else redis
    try:
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(channel)
            yield pubsub
    finally:
        if client is not redis:
            await client.aclose()


def text(value: bytes | str) -> str:
    """A reply value as text: clients made without decode_responses answer bytes, fakeredis' Lua sometimes str."""
    return value.decode() if isinstance(value, bytes) else value
