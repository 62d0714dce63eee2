"""The database pools on /metrics: psycopg_pool's own statistics, read when scraped.

A web process has two kinds of pool: Django's (one per database alias with a pool, made by
Django's PostgreSQL backend) and the store's on the event loop (web/models/async_database.py,
`store-on-loop`). Requests waiting for a connection, and the time they waited, say a pool is
too small for its load: docs/data.md sizes them. The figures are the answering process's own
(with PROMETHEUS_MULTIPROC_DIR, one process of several: pools are not summed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any
from weakref import WeakSet

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_watched: WeakSet[Any] = WeakSet()


def watch(pool: Any) -> None:
    """Show this pool (a psycopg_pool pool named by `pool.name`) while it lives."""
    _watched.add(pool)


class PoolCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "chat_db_pool_connections",
            "Open connections of this process's database pools, in use or idle",
            labels=["pool", "state"],
        )
        largest = GaugeMetricFamily(
            "chat_db_pool_max_connections", "The most connections a pool opens", labels=["pool"]
        )
        waiting = GaugeMetricFamily(
            "chat_db_pool_waiting", "Requests waiting for a connection now", labels=["pool"]
        )
        requests = CounterMetricFamily(
            "chat_db_pool_requests", "Connections asked of a pool", labels=["pool"]
        )
        queued = CounterMetricFamily(
            "chat_db_pool_queued", "Requests that had to wait for a connection", labels=["pool"]
        )
        waited = CounterMetricFamily(
            "chat_db_pool_wait_seconds",
            "Seconds requests waited for a connection",
            labels=["pool"],
        )
        timeouts = CounterMetricFamily(
            "chat_db_pool_timeouts", "Requests that got no connection in time", labels=["pool"]
        )
        for name, stats in _stats():
            idle = stats.get("pool_available", 0)
            connections.add_metric([name, "idle"], idle)
            connections.add_metric([name, "in_use"], stats.get("pool_size", 0) - idle)
            largest.add_metric([name], stats.get("pool_max", 0))
            waiting.add_metric([name], stats.get("requests_waiting", 0))
            requests.add_metric([name], stats.get("requests_num", 0))
            queued.add_metric([name], stats.get("requests_queued", 0))
            waited.add_metric([name], stats.get("requests_wait_ms", 0) / 1000)
            timeouts.add_metric([name], stats.get("requests_errors", 0))
        yield from (connections, largest, waiting, requests, queued, waited, timeouts)


def _stats() -> Iterable[tuple[str, dict[str, int]]]:
    # Django keeps its pools on the backend's class, by alias (django/db/backends/postgresql).
    from django.db.backends.postgresql.base import DatabaseWrapper

    pools: dict[str, Any] = dict(getattr(DatabaseWrapper, "_connection_pools", {}))
    for alias, pool in sorted(pools.items()):
        yield f"django:{alias}", pool.get_stats()
    for pool in list(_watched):
        yield pool.name, pool.get_stats()
