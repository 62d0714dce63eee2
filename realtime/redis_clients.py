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
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

LIMITS_POOL_SIZE = 8  # the most Redis connections the limits of one process use


def _common() -> dict[str, Any]:
    return {
        "socket_keepalive": True,
        "health_check_interval": settings.REDIS_HEALTH_CHECK_SECONDS,
    }


def feed_client(url: str) -> redis.asyncio.Redis:
    """For the pub/sub connection that reads every event this process follows."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=settings.REDIS_FEED_TIMEOUT_SECONDS,
        **_common(),
    )


def publisher(url: str) -> redis.Redis:
    """For PUBLISH from any thread (an action's on_commit)."""
    return redis.Redis.from_url(url, **_publish_options())


def async_publisher(url: str) -> redis.asyncio.Redis:
    """For PUBLISH from a coroutine (bound to the event loop it is first used on)."""
    return redis.asyncio.Redis.from_url(url, **_publish_options())


def _publish_options() -> dict[str, Any]:
    timeout = settings.REDIS_PUBLISH_TIMEOUT_SECONDS
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout, **_common()}


def limits_pool(url: str) -> redis.asyncio.BlockingConnectionPool:
    """For the shared limits: every call bounded by LIMITS_REDIS_TIMEOUT, waiting for a free
    connection included (a pool exhausted counts as Redis being slow)."""
    timeout: float = settings.LIMITS_REDIS_TIMEOUT
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
