"""Every Prometheus metric of the chat, defined once; `/metrics` (web/views_metrics.py) shows them.

The names and labels are a contract with the deployment (the HPA, the alerts, the
dashboard): docs/operations.md lists them. Code records where the thing happens
(realtime/consumers.py, realtime/layer.py, web/middleware.py, ...) by importing
the objects below.

With PROMETHEUS_MULTIPROC_DIR set (before the process starts: prometheus-client
picks its storage at import), every process writes its values to files in that
folder and `/metrics` or the Celery worker's port adds them up: `uvicorn
--workers N`, Celery's prefork pool. Gauges say how (`multiprocess_mode`):
connections add up over the live processes, `chat_draining` is the highest.
"""

from __future__ import annotations

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from project.pool_metrics import PoolCollector

# Socket writes take well under a millisecond on one machine; seconds mean trouble.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUERY_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)

WS_CONNECTIONS = Gauge(
    "chat_ws_connections", "Open websocket connections in this process", multiprocess_mode="livesum"
)
WS_CONNECTIONS_LIMIT = Gauge(
    "chat_ws_connections_limit",
    "The most websocket connections this process accepts (MAX_CONNECTIONS_PER_PROCESS)",
    multiprocess_mode="livesum",
)
WS_FRAMES_RECEIVED = Counter(
    "chat_ws_frames_received", "Websocket frames received from clients, by command type", ["type"]
)
WS_FRAMES_SENT = Counter("chat_ws_frames_sent", "Websocket frames sent to clients")
MESSAGES_STORED = Counter("chat_messages_stored", "Chat messages stored (new ones, not retries)")
# The publisher's batches (realtime/publisher.py): how many publishes each stored together, and
# how long each took from its start to its messages stored and handed to the channel layer.
PUBLISH_BATCH_SIZE = Histogram(
    "chat_publish_batch_size", "Publishes stored together in one batch", buckets=BATCH_BUCKETS
)
PUBLISH_BATCH_SECONDS = Histogram(
    "chat_publish_batch_seconds",
    "From a publish batch's start to its messages stored and handed to the channel layer",
    buckets=LATENCY_BUCKETS,
)
FANOUT_LATENCY = Histogram(
    "chat_fanout_latency_seconds",
    "From a stored event's commit to its frame being written to this process's sockets",
    buckets=LATENCY_BUCKETS,
)
_GC_PAUSE = Histogram(
    "chat_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector (the event loop stops), by generation",
    ["generation"],
    buckets=LATENCY_BUCKETS,
)
GC_PAUSE = [_GC_PAUSE.labels(str(generation)) for generation in range(3)]
CATCHUPS = Counter("chat_catchups", "Catch-ups of a socket from the database (backfills)")
RESYNCS = Counter("chat_resyncs", "Streams a client was told to subscribe again to (resync)")
FEED_RECONNECTS = Counter("chat_feed_reconnects", "Reconnects of the Redis pub/sub feed")
SLOW_CONSUMERS = Counter("chat_slow_consumers", "Sockets cut off for being too slow (4002)")
RATE_LIMITED = Counter("chat_rate_limited", "Refusals by the flood limits, by kind", ["kind"])
HTTP_DURATION = Histogram(
    "chat_http_request_duration_seconds",
    "HTTP request duration, by URL pattern, method and status",
    ["route", "method", "status"],
)
DB_QUERIES = Histogram(
    "chat_db_queries_per_request",
    "Database queries made by one HTTP request, by URL pattern",
    ["route"],
    buckets=QUERY_BUCKETS,
)
CELERY_TASKS = Counter(
    "chat_celery_tasks", "Celery tasks run, by task and outcome", ["task", "outcome"]
)
# Set by /readyz (web/views_health.py) and by failures seen (a lost Redis feed).
DEPENDENCY_UP = Gauge(
    "chat_dependency_up",
    "1 when the dependency (postgres, redis) answered last time, 0 when it did not",
    ["service"],
    multiprocess_mode="livemin",
)
DRAINING = Gauge("chat_draining", "1 while the process drains", multiprocess_mode="livemax")
# The cache for hot reads (web/cache.py): get, set, invalidate (the service failed; reads went
# to the database) or decode (an entry that did not decode, read as a miss).
CACHE_ERRORS = Counter("chat_cache_errors", "Cache failures, by operation", ["op"])
CACHE_LOOKUPS = Counter(
    "chat_cache_lookups",
    "Reads through the cache, by what was read and hit, miss or unavailable (the database read)",
    ["kind", "result"],
)
# Reads meant for the read replica that went to the primary (project/db_router.py): error (the
# replica failed), open (skipped after a failure), behind (it had not replayed what was needed).
DB_REPLICA_FALLBACKS = Counter(
    "chat_db_replica_fallbacks", "Replica reads served by the primary instead, by why", ["reason"]
)


# The database pools' statistics, read when scraped (project/pool_metrics.py).
POOLS = PoolCollector()
REGISTRY.register(POOLS)


def multiprocess_dir() -> str | None:
    """The folder every process of this pod writes its values to, if there is one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def registry() -> CollectorRegistry:
    """What to expose: this process's metrics, or the sum over the multiprocess folder."""
    if multiprocess_dir() is None:
        return REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]  # untyped
    collected.register(POOLS)  # this process's own: pools are not summed
    return collected


def exposition() -> bytes:
    """The metrics in Prometheus' text format."""
    return generate_latest(registry())


def process_exited(pid: int | None = None) -> None:
    """Forget a finished process's live gauges (multiprocess mode); its counters stay summed."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid if pid is not None else os.getpid())  # type: ignore[no-untyped-call]  # untyped
