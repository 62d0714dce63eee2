"""Every Redis client the realtime code makes, with its timeouts in one place.

Three uses, each bounded to suit it (the numbers are settings):
- the event feed's pub/sub connection (realtime/feeds.py): it reads for ever,
  so reads may wait REDIS_FEED_TIMEOUT_SECONDS and a health check PINGs a
  quiet connection, which is how a dead server shows up;
- publishers (the channel layer's broadcasts): a PUBLISH holds an action's
  thread or a coroutine, so it gives up after REDIS_PUBLISH_TIMEOUT_SECONDS
  and the broadcast is retried in the background;
- the shared per-user limits (realtime/cluster_limits.py): on every publish,
  so LIMITS_REDIS_TIMEOUT, and a small blocking pool.
Every client keeps its TCP connection alive and replaces a pooled connection
the server closed (a restart, an idle timeout) instead of failing a call.

With Sentinel (REDIS_URL `redis+sentinel://`, project/redis_config.py) each client asks the
sentinels for the master (redis-py's Sentinel `master_for`, the same timeouts) and asks again
on every new connection, so after a failover a reconnect reaches the promoted replica.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from project import redis_config

LIMITS_POOL_SIZE = 8  # the most Redis connections the limits of one process use


def _common() -> dict[str, Any]:
    return {
        "socket_keepalive": True,
        "health_check_interval": settings.REDIS_HEALTH_CHECK_SECONDS,
    }


def _master(
    sentinel_class: Any, config: redis_config.SentinelConfig, options: dict[str, Any], **extra: Any
) -> Any:
    """A client of the master the sentinels name (its pool asks them on each new connection).
    The sentinels' own connections get the same socket timeouts, and their password if any."""
    sentinel = {name: value for name, value in options.items() if name.startswith("socket_")}
    sentinels = sentinel_class(
        config.nodes, sentinel_kwargs={**sentinel, "password": config.sentinel_password}
    )
    return sentinels.master_for(config.master, password=config.password, **options, **extra)


def async_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client with these options, for a server or a Sentinel master."""
    config = redis_config.sentinel_of(url)
    if config is None:
        return redis.asyncio.Redis.from_url(url, **options)
    client: redis.asyncio.Redis = _master(redis.asyncio.sentinel.Sentinel, config, options)
    return client


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A thread-safe pooled client with these options, for a server or a Sentinel master."""
    config = redis_config.sentinel_of(url)
    if config is None:
        return redis.Redis.from_url(url, **options)
    client: redis.Redis = _master(redis.sentinel.Sentinel, config, options)
    return client


def feed_client(url: str) -> redis.asyncio.Redis:
    """For the pub/sub connection that reads every event this process follows."""
    return async_client(
        url,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=settings.REDIS_FEED_TIMEOUT_SECONDS,
        **_common(),
    )


def publisher(url: str) -> redis.Redis:
    """For PUBLISH from any thread (an action's on_commit)."""
    return sync_client(url, **_publish_options())


def async_publisher(url: str) -> redis.asyncio.Redis:
    """For PUBLISH from a coroutine (bound to the event loop it is first used on)."""
    return async_client(url, **_publish_options())


def _publish_options() -> dict[str, Any]:
    timeout = settings.REDIS_PUBLISH_TIMEOUT_SECONDS
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout, **_common()}


class _BlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """Connections to the master Sentinel names, waiting (bounded) for a free one."""


def limits_pool(url: str) -> redis.asyncio.ConnectionPool:
    """For the shared limits: every call bounded by LIMITS_REDIS_TIMEOUT, waiting for a free
    connection included (a pool exhausted counts as Redis being slow)."""
    timeout: float = settings.LIMITS_REDIS_TIMEOUT
    options: dict[str, Any] = {
        "max_connections": LIMITS_POOL_SIZE,
        "timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        # redis-py 8 retries 10 times with backoff by default; once, at once, is enough to
        # replace a pooled connection the server closed.
        "retry": Retry(NoBackoff(), 1),
        **_common(),
    }
    config = redis_config.sentinel_of(url)
    if config is not None:
        client = _master(
            redis.asyncio.sentinel.Sentinel,
            config,
            options,
            connection_pool_class=_BlockingSentinelPool,
        )
        pool: redis.asyncio.ConnectionPool = client.connection_pool
        return pool
    return redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=LIMITS_POOL_SIZE,
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        # redis-py 8 retries 10 times with backoff by default; once, at once, is enough to
        # replace a pooled connection the server closed.
        retry=Retry(NoBackoff(), 1),
        **_common(),
    )
