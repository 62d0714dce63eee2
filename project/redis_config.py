"""Which Redis the app uses: one server (REDIS_URL) or a master found through Sentinel.

Exactly one of REDIS_URL, REDIS_SENTINELS (with REDIS_SENTINEL_MASTER) and REDIS_CLUSTER_NODES
may be set; anything else stops the start-up with ImproperlyConfigured.

Why a URL for Sentinel too: everything that uses Redis reads `settings.REDIS_URL` (to know
whether Redis is configured) and hands it to realtime/redis_clients.py, which makes every client.
So Sentinel is `settings.REDIS_URL = "redis+sentinel://h1:26379,h2:26379/mymaster?..."`, built
here from the REDIS_SENTINEL* settings: the code that only asks "is Redis configured" and the
channel layer's config stay as they are, and only the client factory (redis_clients) and
Celery's broker (background_settings) tell the two apart. The URL carries the passwords
(percent-encoded), as a REDIS_URL with a password does; it is never logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from django.core.exceptions import ImproperlyConfigured

SENTINEL_SCHEME = "redis+sentinel"


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
    server's URL, a `redis+sentinel://` one, or None without Redis."""
    url, sentinels, cluster = (
        get(name) or None for name in ("REDIS_URL", "REDIS_SENTINELS", "REDIS_CLUSTER_NODES")
    )
    named = (("REDIS_URL", url), ("REDIS_SENTINELS", sentinels), ("REDIS_CLUSTER_NODES", cluster))
    given = [name for name, value in named if value]
    if len(given) > 1:
        raise ImproperlyConfigured(f"set one of {' and '.join(given)}, not both (one Redis setup)")
    if cluster:
        raise ImproperlyConfigured(
            "REDIS_CLUSTER_NODES: Redis Cluster is not supported yet; "
            "use REDIS_URL or REDIS_SENTINELS"
        )
    master = get("REDIS_SENTINEL_MASTER") or None
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
