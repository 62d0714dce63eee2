"""Which Redis the app uses: one server (REDIS_URL), a master found through Sentinel, or a
Redis Cluster.

Exactly one of REDIS_URL, REDIS_SENTINELS (with REDIS_SENTINEL_MASTER) and REDIS_CLUSTER_NODES
may be set; anything else stops the start-up with ImproperlyConfigured.

Why a URL for Sentinel too: everything that uses Redis reads `settings.REDIS_URL` (to know
whether Redis is configured) and hands it to realtime/redis_clients.py, which makes every client.
So Sentinel is `settings.REDIS_URL = "redis+sentinel://h1:26379,h2:26379/mymaster?..."`, built
here from the REDIS_SENTINEL* settings, and Cluster is `redis+cluster://h1:7000,h2:7000?...` from
REDIS_CLUSTER_NODES (seed nodes: any few of the cluster's; the clients learn the rest). The code
that only asks "is Redis configured" and the channel layer's config stay as they are, and only
the client factory (redis_clients), the fan-out transport (feeds), the cache and Celery's broker
tell them apart. The URL carries the passwords (percent-encoded), as a REDIS_URL with a
password does; it is never logged.

Celery cannot use a Redis Cluster as its broker (kombu has no cluster transport), so with
REDIS_CLUSTER_NODES the broker must be named by CELERY_BROKER_URL (project/background_settings.py
says so at start-up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import RedisClusterException, RedisError

# What a Redis call can fail with: redis-py's Cluster client also raises
# RedisClusterException, which is not a RedisError (no reachable node, a slot not covered).
ERRORS: tuple[type[RedisError], type[RedisClusterException]] = (RedisError, RedisClusterException)

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"


@dataclass(frozen=True)
class SentinelConfig:
    """Where the sentinels are, which master they watch, and the passwords."""

    nodes: tuple[tuple[str, int], ...]
    master: str
    password: str | None = None  # the master's (and replicas')
    sentinel_password: str | None = None  # the sentinels' own, if they have one

    def url(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.nodes)
        query = {
            name: value
            for name, value in (
                ("password", self.password),
                ("sentinel_password", self.sentinel_password),
            )
            if value
        }
        suffix = f"?{urlencode(query)}" if query else ""
        return f"{SENTINEL_SCHEME}://{hosts}/{quote(self.master, safe='')}{suffix}"

    def celery_broker(self) -> tuple[str, dict[str, object]]:
        """kombu's Redis Sentinel transport: the broker URL and its transport options."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        url = ";".join(f"sentinel://{auth}{host}:{port}" for host, port in self.nodes)
        options: dict[str, object] = {"master_name": self.master}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return url, options


def sentinel_of(url: str | None) -> SentinelConfig | None:
    """The Sentinel configuration a REDIS_URL made by `redis_url` stands for, else None."""
    if not url or not url.startswith(f"{SENTINEL_SCHEME}://"):
        return None
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    return SentinelConfig(
        nodes=parse_nodes(parts.netloc, "REDIS_URL"),
        master=unquote(parts.path.lstrip("/")),
        password=query.get("password"),
        sentinel_password=query.get("sentinel_password"),
    )


@dataclass(frozen=True)
class ClusterConfig:
    """Seed nodes of a Redis Cluster and its password."""

    nodes: tuple[tuple[str, int], ...]
    password: str | None = None

    def url(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.nodes)
        suffix = f"?{urlencode({'password': self.password})}" if self.password else ""
        return f"{CLUSTER_SCHEME}://{hosts}{suffix}"


def cluster_of(url: str | None) -> ClusterConfig | None:
    """The Cluster configuration a REDIS_URL made by `redis_url` stands for, else None."""
    if not url or not url.startswith(f"{CLUSTER_SCHEME}://"):
        return None
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    return ClusterConfig(
        nodes=parse_nodes(parts.netloc, "REDIS_URL"), password=query.get("password")
    )


def parse_nodes(value: str, name: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` as pairs; a malformed one is ImproperlyConfigured naming `name`."""
    nodes = []
    for item in value.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ImproperlyConfigured(f"{name}: host:port,host:port,..., not {item.strip()!r}")
        nodes.append((host.strip("[]"), int(port)))
    return tuple(nodes)


def redis_url(get: Callable[[str], str | None]) -> str | None:
    """settings.REDIS_URL from the settings `get` reads (project/environment.secret): the
    server's URL, a `redis+sentinel://` or `redis+cluster://` one, or None without Redis."""
    url, sentinels, cluster = (
        get(name) or None for name in ("REDIS_URL", "REDIS_SENTINELS", "REDIS_CLUSTER_NODES")
    )
    named = (("REDIS_URL", url), ("REDIS_SENTINELS", sentinels), ("REDIS_CLUSTER_NODES", cluster))
    given = [name for name, value in named if value]
    if len(given) > 1:
        raise ImproperlyConfigured(f"set one of {' and '.join(given)}, not both (one Redis setup)")
    master = get("REDIS_SENTINEL_MASTER") or None
    if cluster:
        if master:
            raise ImproperlyConfigured("REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not")
        return ClusterConfig(
            nodes=parse_nodes(cluster, "REDIS_CLUSTER_NODES"),
            password=get("REDIS_PASSWORD") or None,
        ).url()
    if not sentinels:
        if master:
            raise ImproperlyConfigured("REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not")
        return url
    if not master:
        raise ImproperlyConfigured(
            "REDIS_SENTINELS needs REDIS_SENTINEL_MASTER (the master's name)"
        )
    return SentinelConfig(
        nodes=parse_nodes(sentinels, "REDIS_SENTINELS"),
        master=master,
        password=get("REDIS_PASSWORD") or None,
        sentinel_password=get("REDIS_SENTINEL_PASSWORD") or None,
    ).url()
