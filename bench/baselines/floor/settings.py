"""The tutorial's settings, trimmed to what a websocket-only chat needs."""

from __future__ import annotations

import os

SECRET_KEY = "floor-baseline-not-secret"  # noqa: S105 -- a local benchmark server, no sessions
DEBUG = False
# The tutorial wraps the router in AllowedHostsOriginValidator; the load generator sends no
# Origin header, which only a "*" entry lets through.
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
]

ASGI_APPLICATION = "bench.baselines.floor.asgi.application"
ROOT_URLCONF = "bench.baselines.floor.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True

# As in the tutorial: the Redis channel layer with its default capacity and expiry. One
# deviation: redis-py 8 gives up on a read after 5 s, exactly as long as channels_redis blocks
# in BZPOPMIN, so with the tutorial's config every idle receive ends in a TimeoutError that
# kills a consumer. That is a library mismatch, not the design's cost, so the floor avoids it.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 10}]},
    }
}
