"""Version tokens written from the event loop, for a store committed there (web/cache.py's
`achanged_last_seq`, called by web/actions' `ado_send_messages`).

A batch stored on the event loop bumps its rooms' versions before it is broadcast. Django's
cache has no asyncio client (its `a*` methods run the blocking ones in a thread), and from a
thread the bump cost 390-480 us of CPU and needed a free thread; written here with redis-py's
asyncio client, as one script call, it costs 150 (docs/performance.md). At low rates each
message is a batch, so this is paid per message. What is written is what Django's RedisCache
would write: its keys, each token stored as its digits, the same expiry. Memcached, with no
asyncio client here, keeps the thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.redis import RedisCache
from redis.asyncio.cluster import RedisCluster

from realtime import redis_clients  # every Redis client is made there
from web.cluster_cache import RedisClusterCache

# KEYS: the keys. ARGV: a token per key, then the expiry in seconds ("" for none).
SET_TOKENS = """
local ttl = ARGV[#ARGV]
for i, key in ipairs(KEYS) do
    if ttl == '' then
        redis.call('SET', key, ARGV[i])
    else
        redis.call('SET', key, ARGV[i], 'EX', ttl)
    end
end
"""


class Writer:
    """Sets a Django Redis cache's keys to integer tokens through an asyncio client."""

    def __init__(self, backend: BaseCache, client: Any, loop: asyncio.AbstractEventLoop):
        self.backend = backend
        self.client = client
        self.loop = loop
        # One command for all the keys: redis-py spends 20-40 us of Python on each command
        # of a pipeline. A Cluster refuses a script across slots: there, a pipeline.
        self.script = (
            None if isinstance(client, RedisCluster) else client.register_script(SET_TOKENS)
        )

    async def set_tokens(self, tokens: dict[str, int], ttl: int | None) -> None:
        """One round trip (per master on a Cluster), with the expiry of Django's set_many."""
        keys = [self.backend.make_and_validate_key(key) for key in tokens]
        expiry = self.backend.get_backend_timeout(ttl)
        if self.script is not None:
            await self.script(keys, [*tokens.values(), "" if expiry is None else expiry])
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for key, token in zip(keys, tokens.values(), strict=True):
                pipe.set(key, token, ex=expiry)
            await pipe.execute()


_writer: Writer | None = None


def writer(backend: BaseCache) -> Writer | None:
    """The running loop's writer for `backend`; None for a cache that is not Redis."""
    global _writer
    loop = asyncio.get_running_loop()
    if _writer is None or _writer.backend is not backend or _writer.loop is not loop:
        client = _client(backend)
        _writer = None if client is None else Writer(backend, client, loop)
    return _writer


def forget() -> None:
    """Drop the writer (the cache's settings changed; web/cache.py's `forget`)."""
    global _writer
    _writer = None


def _client(backend: BaseCache) -> Any:
    if not isinstance(backend, RedisCache):
        return None
    # Django's RedisCacheClient (untyped): the servers and options it was given.
    sync: Any = backend._cache  # type: ignore[attr-defined]
    options = {k: v for k, v in sync._pool_options.items() if k.startswith("socket_")}
    # A Cluster's servers are its seed nodes (web/cluster_cache.py); Django writes to the
    # first server of several.
    url = ",".join(sync._servers) if isinstance(backend, RedisClusterCache) else sync._servers[0]
    return redis_clients.async_client(url, **options)
