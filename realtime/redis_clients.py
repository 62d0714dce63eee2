"""Every Redis client the realtime code makes, with its timeouts in one place.

Three uses, each bounded to suit it (the numbers are settings):
- the event feed's pub/sub connection (realtime/pubsub_connection.py, not a
  redis-py client: `feed_address` says where it goes): it reads for ever, a
  health check PINGs it when quiet and it is given up after
  REDIS_FEED_TIMEOUT_SECONDS of silence, which is how a dead server shows up;
- publishers (the channel layer's broadcasts): a PUBLISH holds an action's
  thread or a coroutine, so it gives up after REDIS_PUBLISH_TIMEOUT_SECONDS
  and the broadcast is retried in the background;
- the shared per-user limits (realtime/cluster_limits.py): on every publish,
  so LIMITS_REDIS_TIMEOUT, and a small blocking pool.
Every client keeps its TCP connection alive and replaces a pooled connection
the server closed (a restart, an idle timeout) instead of failing a call.

With Sentinel (REDIS_URL `redis+sentinel://`, project/redis_config.py) each client asks the
sentinels for the master (redis-py's Sentinel `master_for`, the same timeouts) and asks again
on every new connection, so after a failover a reconnect reaches the promoted replica. One
Sentinel object (its connections to the sentinels) per configuration, and per event loop for
asyncio ones, serves every client: a feed that reconnects does not open new ones each time.

With Redis Cluster (REDIS_URL `redis+cluster://`) each client is redis-py's RedisCluster, which
routes every command by its key's slot and follows MOVED and failovers; the fan-out's pub/sub
is sharded and keeps one connection per master (realtime/sharded_feed.py).
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from project import redis_config

LIMITS_POOL_SIZE = 8  # the most Redis connections the limits of one process use
SCRIPTS_IN_FLIGHT = 8  # run_scripts on a Cluster: calls under way at once

# An asyncio client for one server, a Sentinel master or a Cluster: the same commands.
AsyncRedis = redis.asyncio.Redis | redis.asyncio.RedisCluster
SyncRedis = redis.Redis | redis.cluster.RedisCluster

_sync_sentinels: dict[tuple[Any, ...], redis.sentinel.Sentinel] = {}
_async_sentinels: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[Any, ...], redis.asyncio.sentinel.Sentinel]
] = weakref.WeakKeyDictionary()


def _common() -> dict[str, Any]:
    return {
        "socket_keepalive": True,
        "health_check_interval": settings.REDIS_HEALTH_CHECK_SECONDS,
    }


def _master(
    sentinel_class: Any, config: redis_config.SentinelConfig, options: dict[str, Any], **extra: Any
) -> Any:
    """A client of the master the sentinels name (its pool asks them on each new connection)."""
    sentinels = _sentinels(sentinel_class, config, options)
    return sentinels.master_for(config.master, password=config.password, **options, **extra)


def _sentinels(
    sentinel_class: Any, config: redis_config.SentinelConfig, options: dict[str, Any]
) -> Any:
    """The Sentinel object of this configuration. The sentinels' own connections get the
    same socket timeouts, and their password if any."""
    sentinel = {name: value for name, value in options.items() if name.startswith("socket_")}
    key = (config, tuple(sorted(sentinel.items())))
    if sentinel_class is redis.sentinel.Sentinel:
        known: dict[tuple[Any, ...], Any] = _sync_sentinels
    else:  # asyncio: its connections belong to the running loop
        known = _async_sentinels.setdefault(asyncio.get_running_loop(), {})
    sentinels = known.get(key)
    if sentinels is None:
        sentinels = known[key] = sentinel_class(
            config.nodes, sentinel_kwargs={**sentinel, "password": config.sentinel_password}
        )
    return sentinels


def cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    # RedisCluster takes its connection settings as keyword arguments. Not a pool's bound: its
    # pools never wait for a free connection but fail at once, which a burst of callers would
    # turn into errors; what it holds is bounded by its callers (run_scripts bounds its own).
    return {k: v for k, v in options.items() if k not in ("max_connections", "timeout")}


def async_client(url: str, **options: Any) -> AsyncRedis:
    """An asyncio client with these options, for a server, a Sentinel master or a Cluster."""
    if cluster := redis_config.cluster_of(url):
        return redis.asyncio.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in cluster.nodes],
            password=cluster.password,
            **cluster_options(options),
        )
    config = redis_config.sentinel_of(url)
    if config is None:
        return redis.asyncio.Redis.from_url(url, **options)
    client: redis.asyncio.Redis = _master(redis.asyncio.sentinel.Sentinel, config, options)
    return client


def sync_client(url: str, **options: Any) -> SyncRedis:
    """A thread-safe pooled client with these options, for a server, a Sentinel master or a
    Cluster."""
    if cluster := redis_config.cluster_of(url):
        return redis.cluster.RedisCluster(
            startup_nodes=[
                redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
                for h, p in cluster.nodes
            ],
            password=cluster.password,
            **cluster_options(options),
        )
    config = redis_config.sentinel_of(url)
    if config is None:
        return redis.Redis.from_url(url, **options)
    client: redis.Redis = _master(redis.sentinel.Sentinel, config, options)
    return client


@dataclass(frozen=True)
class Address:
    """Where the feed's own pub/sub connection goes and how it logs in
    (realtime/pubsub_connection.py)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket's
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = None


async def feed_address(url: str) -> Address:
    """Where the event feed of REDIS_URL connects: the server of the URL (redis-py parses it,
    TLS options included), or the master the sentinels name now."""
    config = redis_config.sentinel_of(url)
    if config is not None:
        timeout = {"socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT_SECONDS}
        sentinels = _sentinels(redis.asyncio.sentinel.Sentinel, config, timeout)
        host, port = await sentinels.discover_master(config.master)
        return Address(host, int(port), password=config.password)
    options: dict[str, Any] = dict(redis.asyncio.connection.parse_url(url))
    context = None
    if options.pop("connection_class", None) is redis.asyncio.SSLConnection:
        # The TLS context redis-py would make of the URL's ssl_* parameters.
        context = redis.asyncio.SSLConnection(**options).ssl_context.get()
    return Address(
        host=options.get("host", "localhost"),
        port=int(options.get("port", 6379)),
        path=options.get("path"),
        username=options.get("username"),
        password=options.get("password"),
        ssl=context,
    )


def node_address(host: str, port: int, url: str) -> Address:
    """For the pub/sub connection to one master of a Cluster (realtime/sharded_feed.py)."""
    cluster = redis_config.cluster_of(url)
    return Address(host, port, password=cluster.password if cluster else None)


async def run_scripts(
    client: AsyncRedis, calls: Sequence[tuple[AsyncScript, Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    """(script, keys, args) calls in one round trip, their answers in order: a pipeline on one
    server; on a Cluster, where redis-py refuses scripts in a pipeline (the calls may go to
    several nodes), all at once, each to the node of its keys."""
    if isinstance(client, redis.asyncio.RedisCluster):
        in_flight = asyncio.Semaphore(SCRIPTS_IN_FLIGHT)

        async def call(script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
            async with in_flight:
                return await script(keys=keys, args=args)

        return list(await asyncio.gather(*(call(*c) for c in calls)))
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            await script(keys=keys, args=args, client=pipe)
        answers: list[Any] = await pipe.execute()
        return answers


def feed_client(url: str) -> AsyncRedis:
    """For the sharded feed's view of a Cluster's topology (which master owns which slot)."""
    return async_client(
        url,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=settings.REDIS_FEED_TIMEOUT_SECONDS,
        **_common(),
    )


def publisher(url: str) -> SyncRedis:
    """For PUBLISH from any thread (an action's on_commit)."""
    return sync_client(url, **_publish_options())


def async_publisher(url: str) -> AsyncRedis:
    """For PUBLISH from a coroutine (bound to the event loop it is first used on)."""
    return async_client(url, **_publish_options())


def _publish_options() -> dict[str, Any]:
    timeout = settings.REDIS_PUBLISH_TIMEOUT_SECONDS
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout, **_common()}


class _BlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """Connections to the master Sentinel names, waiting (bounded) for a free one."""


def limits_options() -> dict[str, Any]:
    """The shared limits' connection settings: every call bounded by LIMITS_REDIS_TIMEOUT,
    waiting for a free connection included (a pool exhausted counts as Redis being slow)."""
    timeout: float = settings.LIMITS_REDIS_TIMEOUT
    return {
        "max_connections": LIMITS_POOL_SIZE,
        "timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        # redis-py 8 retries 10 times with backoff by default; once, at once, is enough to
        # replace a pooled connection the server closed.
        "retry": Retry(NoBackoff(), 1),
        **_common(),
    }


def limits_client(url: str) -> AsyncRedis:
    """For the shared limits (realtime/cluster_limits.py): a small blocking pool on one server
    or a Sentinel master; on a Cluster, RedisCluster with the same timeouts."""
    options = limits_options()
    if redis_config.cluster_of(url):
        return async_client(url, **options)
    config = redis_config.sentinel_of(url)
    if config is not None:
        client: redis.asyncio.Redis = _master(
            redis.asyncio.sentinel.Sentinel,
            config,
            options,
            connection_pool_class=_BlockingSentinelPool,
        )
        return client
    # from_pool: closing the client closes its pool.
    return redis.asyncio.Redis.from_pool(
        redis.asyncio.BlockingConnectionPool.from_url(url, **options)
    )
