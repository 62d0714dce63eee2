"""Readiness: PostgreSQL answers, Redis answers (with REDIS_URL), and the process is not draining.

Each check is bounded by CHECK_TIMEOUT and they run together, so /readyz answers within
about a second whatever hangs:

- PostgreSQL: a new connection through psycopg's async API, closed at once. The server
  sends ReadyForQuery only from a backend that has started and authenticated, ready to
  run queries, so a connection that gets there is a server that answers. Not a query:
  psycopg cancels a query that times out by asking the server, and waits up to 10 s for
  that (on a frozen server, the full 10 s), while a connection attempt is dropped at
  once. Not the ORM either: its calls run in a thread, and a thread blocked on a server
  that stopped answering stays blocked whatever timeout its caller gives up after; nor
  the pool: a pool busy serving users is not a database that is down.
- Redis: PING on a client of its own (one connection, kept, no retries), dropped after a
  failure. On a Redis Cluster, one PING per master, and ready when any answers: a shard
  down (failing over, or lost) stalls live delivery in its rooms only, and messages are
  stored all the same; every pod turning unready for it would stop the whole service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from project import metrics, redis_config
from realtime import redis_clients
from realtime.process import get_process
from realtime.tasks import spawn

logger = logging.getLogger(__name__)

# Below the kubelet's probe timeout, so a hung dependency reads as "unavailable", not as a
# probe that timed out (which tells the operator nothing).
CHECK_TIMEOUT = 1.0

OK, UNAVAILABLE, NOT_CONFIGURED = "ok", "unavailable", "not configured"


class Health:
    """The Redis client the readiness checks keep, made on the loop that first uses it."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.redis: redis_clients.AsyncRedis | None = None
        self.redis_url: str | None = None

    async def postgres(self) -> str:
        """A connection that reaches ReadyForQuery within the timeout, then closed."""
        database = connections["default"]
        if database.vendor != "postgresql":
            return NOT_CONFIGURED  # SQLite (`make run`): a file, no server to lose
        params = database.get_connection_params()
        params.pop("cursor_factory", None)  # the ORM's is a sync cursor
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        except (psycopg.Error, OSError, TimeoutError):
            logger.warning("readiness: PostgreSQL did not answer", exc_info=True)
            return UNAVAILABLE
        await conn.close()
        return OK

    async def redis_ping(self) -> str:
        """PING on this process's probe connection, when the process uses Redis."""
        url = settings.REDIS_URL
        if not url:
            return NOT_CONFIGURED
        self._same_loop()
        if self.redis is not None and self.redis_url != url:
            self._drop_redis()  # the setting changed (tests)
        if self.redis is None:
            self.redis_url = url
            self.redis = redis_clients.async_client(
                url,
                socket_connect_timeout=CHECK_TIMEOUT,
                socket_timeout=CHECK_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                max_connections=1,
            )
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await _ping(self.redis)
        except (*redis_config.ERRORS, OSError, TimeoutError):
            logger.warning("readiness: Redis did not answer", exc_info=True)
            self._drop_redis()
            return UNAVAILABLE
        return OK

    def _drop_redis(self) -> None:
        client, self.redis = self.redis, None
        if client is not None:
            # Closing may wait on a dead peer: in the background, bounded.
            spawn(_close_quietly(client), name="close the readiness Redis client")

    def _same_loop(self) -> None:
        # Connections belong to the loop they were made on (tests run several loops).
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.loop, self.redis = loop, None

    async def aclose(self) -> None:
        client, self.redis = self.redis, None
        if client is not None:
            await _close_quietly(client)


async def _ping(client: redis_clients.AsyncRedis) -> None:
    """PING the server; on a Cluster, its masters, and fail only if none answers."""
    if not isinstance(client, RedisCluster):
        await client.ping()
        return
    await client.initialize()
    masters = client.get_primaries()
    answers = await asyncio.gather(
        *(client.ping(target_nodes=master) for master in masters), return_exceptions=True
    )
    if not any(answer is True for answer in answers):
        raise next((a for a in answers if isinstance(a, Exception)), ConnectionError("no master"))


async def _close_quietly(client: redis_clients.AsyncRedis) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CHECK_TIMEOUT):
            await client.aclose()


async def readiness() -> dict[str, Any]:
    """Whether this process should get traffic, and which dependency says no."""
    process = get_process()
    postgres, redis_state = await asyncio.gather(
        process.health.postgres(), process.health.redis_ping()
    )
    for service, state in (("postgres", postgres), ("redis", redis_state)):
        if state != NOT_CONFIGURED:
            metrics.DEPENDENCY_UP.labels(service).set(1 if state == OK else 0)
    return {
        "ready": not process.draining and UNAVAILABLE not in (postgres, redis_state),
        "postgres": postgres,
        "redis": redis_state,
        "draining": process.draining,
    }
