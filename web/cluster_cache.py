"""Django's RedisCache on a Redis Cluster: CACHE_URL=redis+cluster://host:port,host:port.

Django's own client talks to one server (or writes to the first of several); redis-py's
RedisCluster routes each key to its master and follows failovers. Only the calls that take
several keys differ: a Cluster refuses MGET and MSET across slots, so those go key by key in
one pipelined round trip per master. Written here because Django ships no Cluster client
and django-redis' cluster support is a third-party fork; this is the small part that differs.
The password, as with REDIS_URL, goes in the query (`?password=...`): project/redis_config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.cluster
from django.core.cache.backends.redis import RedisCache, RedisCacheClient

from project import redis_config


class RedisClusterCacheClient(RedisCacheClient):
    def __init__(self, servers: list[str], **options: Any):
        super().__init__(servers, **options)
        # Django split the URL at its commas: put it together again.
        config = redis_config.cluster_of(",".join(servers))
        if config is None:
            raise ValueError("a redis+cluster:// CACHE_URL")
        self._cluster = redis.cluster.RedisCluster(
            startup_nodes=[
                redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in config.nodes
            ],
            password=config.password,
            **{k: v for k, v in options.items() if k.startswith("socket_")},
        )

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        return self._cluster

    def get_many(self, keys: Any) -> dict[Any, Any]:
        keys = list(keys)
        values = self._cluster.mget_nonatomic(keys)
        loads = self._serializer.loads  # type: ignore[attr-defined]  # Django's, untyped
        return {k: loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def set_many(self, data: Mapping[Any, Any], timeout: Any) -> None:
        dumps = self._serializer.dumps  # type: ignore[attr-defined]  # Django's, untyped
        with self._cluster.pipeline() as pipe:  # type: ignore[no-untyped-call]
            for key, value in data.items():
                pipe.set(key, dumps(value), ex=timeout)
            pipe.execute()


class RedisClusterCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]):
        super().__init__(server, params)
        self._class = RedisClusterCacheClient
