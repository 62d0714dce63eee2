"""Settings, read from the environment.

With nothing set the app runs on an embedded default: a SQLite file and the
in-memory channel layer. DATABASE_URL switches to PostgreSQL, REDIS_URL to the
Redis channel layer. Secrets may also come from a `NAME_FILE` path, the way
Kubernetes mounts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from project import redis_config
from project.environment import env, secret

BASE_DIR = Path(__file__).resolve().parent.parent


DEBUG = env.bool("DEBUG", default=False)
SECURE = env.bool("SECURE", default=False)

SECRET_KEY = secret("SECRET_KEY")
if not SECRET_KEY:
    # Production (SECURE=1) never falls back to a generated key: every process must share one.
    if not DEBUG and env.bool("REQUIRE_SECRET_KEY", default=SECURE):
        raise RuntimeError("SECRET_KEY (or SECRET_KEY_FILE) must be set")
    # A per-checkout key for local runs, never committed: it lives in the ignored var/ folder.
    _key_file = BASE_DIR / "var" / "secret_key"
    if not _key_file.exists():
        from django.core.management.utils import get_random_secret_key

        _key_file.parent.mkdir(exist_ok=True)
        _key_file.write_text(get_random_secret_key())
    SECRET_KEY = _key_file.read_text().strip()

ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "csp",
    "web",
    "realtime",
]

MIDDLEWARE = [
    # First: the request id is bound (logs) and the whole request is timed (metrics).
    "web.middleware.RequestIdMiddleware",
    "web.middleware.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files first: WhiteNoise answers them before sessions or auth are looked at.
    "web.static_files.StaticFilesMiddleware",
    # The Content-Security-Policy header on every page (CONTENT_SECURITY_POLICY below).
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "web.auth.BearerCsrfExemptMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Marks request.user verified when the session holds a confirmed OTP device (the admin).
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "web" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The message store's statement is prepared once per pooled connection, not parsed and
# planned at every batch (web/models/prepared.py). 0 behind a pooler that
# drops prepared statements (PgBouncer in transaction mode before 1.21 or without
# max_prepared_statements).
DATABASE_PREPARED_STATEMENTS = env.bool("DATABASE_PREPARED_STATEMENTS", default=True)
# With it, each connection keeps one plan for that statement, for every batch: left to
# choose, PostgreSQL planned it again at every execution. Only statements bound on the
# server are affected, and that is only this one.
GENERIC_PLANS_OPTION = "-c plan_cache_mode=force_generic_plan"

# DATABASE_URL_FILE counts too: Kubernetes mounts the URL as a file (k8s/base/configmap.yaml).
if secret("DATABASE_URL"):
    DATABASES = {"default": env.db_url("DATABASE_URL")}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        _db_password = secret("DATABASE_PASSWORD")
        if _db_password:
            DATABASES["default"]["PASSWORD"] = _db_password
        DATABASES["default"].setdefault("OPTIONS", {})
        if env.bool("DATABASE_POOL", default=True):
            # psycopg's pool, per process (docs/data.md). Size it so that
            #   (DATABASE_POOL_MAX_SIZE + PUBLISH_IN_FLIGHT) x web processes
            #     + DATABASE_POOL_MAX_SIZE x Celery task processes
            #     <= PostgreSQL's max_connections - a reserve (superuser, migrations, psql)
            # e.g. max_connections 100, reserve 10: 7 web processes of 12. Each process keeps
            # MIN_SIZE open even when idle. A request past MAX_SIZE waits up to TIMEOUT seconds,
            # then gets 503 `unavailable` (a socket: an `unavailable` error frame).
            # (DATABASE_POOL_MIN and DATABASE_POOL_MAX, the former names, still count.)
            DATABASES["default"]["OPTIONS"]["pool"] = {
                "min_size": env.int("DATABASE_POOL_MIN_SIZE", env.int("DATABASE_POOL_MIN", 2)),
                "max_size": env.int("DATABASE_POOL_MAX_SIZE", env.int("DATABASE_POOL_MAX", 10)),
                "timeout": env.float("DATABASE_POOL_TIMEOUT", default=5.0),
            }
            # Django refuses persistent connections with the pool: a connection goes back to
            # it when its request ends (or its read ends, web/access.py), not when it ages.
            if DATABASES["default"].get("CONN_MAX_AGE"):
                raise ImproperlyConfigured("conn_max_age must be 0 with DATABASE_POOL on")
            DATABASES["default"]["CONN_MAX_AGE"] = 0
        # Bound every statement so a stuck database turns into an `unavailable` error, not a hang.
        DATABASES["default"]["OPTIONS"]["connect_timeout"] = env.int("DATABASE_CONNECT_TIMEOUT", 5)
        DATABASES["default"]["OPTIONS"]["options"] = (
            f"-c statement_timeout={env.int('DATABASE_STATEMENT_TIMEOUT_MS', 5000)}"
        )
        if DATABASE_PREPARED_STATEMENTS:
            DATABASES["default"]["OPTIONS"]["options"] += f" {GENERIC_PLANS_OPTION}"
        # A streaming replica for history pages and room lists (project/db_router.py says which
        # reads; docs/data.md why a lagging or stopped replica never hides an acked message).
        # Same pool and timeouts as the primary; its pool counts in the sizing rule above too.
        if secret("DATABASE_REPLICA_URL"):
            DATABASES["replica"] = {
                **env.db_url("DATABASE_REPLICA_URL"),
                "OPTIONS": dict(DATABASES["default"]["OPTIONS"]),
                "CONN_MAX_AGE": DATABASES["default"].get("CONN_MAX_AGE", 0),
                # Tests run with it set read their test database through it, not a new one.
                "TEST": {"MIRROR": "default"},
            }
            if _db_password and not DATABASES["replica"].get("PASSWORD"):
                DATABASES["replica"]["PASSWORD"] = _db_password
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env.str("SQLITE_PATH", default=str(BASE_DIR / "var" / "db.sqlite3")),
            # IMMEDIATE takes the write lock when a transaction starts, so seq assignment
            # never races into "database is locked" on upgrade.
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
        }
    }

# Marked reads to the replica when there is one; everything else to the primary.
DATABASE_ROUTERS = ["project.db_router.ReplicaRouter"]
# After a replica error, marked reads go to the primary for this long before trying it again.
DATABASE_REPLICA_RETRY_SECONDS = env.float("DATABASE_REPLICA_RETRY_SECONDS", default=5.0)

# With REDIS_URL the channel layer (realtime/layer.py) runs over Redis pub/sub and processes
# share it; without, it stays inside one process. Or REDIS_SENTINELS + REDIS_SENTINEL_MASTER:
# then REDIS_URL is a redis+sentinel:// URL that realtime/redis_clients.py follows through
# Sentinel. Or REDIS_CLUSTER_NODES=host:port,...: a redis+cluster:// URL, and the fan-out uses
# sharded pub/sub (realtime/sharded_feed.py); Celery then needs CELERY_BROKER_URL and the
# cache CACHE_URL of their own. project/redis_config.py; any other mix stops the start-up.
REDIS_URL = redis_config.redis_url(secret)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "realtime.layer.ChatChannelLayer",
        "CONFIG": {
            "url": REDIS_URL,
            # Messages waiting on a channel longer than this are dropped; per channel at most.
            "expiry": env.float("CHANNEL_EXPIRY_SECONDS", default=60.0),
            "capacity": env.int("CHANNEL_CAPACITY", default=100),
        },
    }
}

# The cache for hot reads (web/cache.py: room lists, rooms, membership; docs/data.md), from
# CACHE_URL: redis://host:6379/1 (Django's RedisCache), redis+cluster://host:7000,host:7001 (a
# Redis Cluster: web/cluster_cache.py) or memcache://host:11211 (PyMemcacheCache).
# Without it: this process's memory, when the app is one process (no REDIS_URL); with several
# processes (REDIS_URL set) nothing, since a process's memory never hears of another's changes.
CACHE_URL = secret("CACHE_URL")
# Entries expire after this; it also bounds how stale an entry can be after a lost invalidation.
CACHE_TTL_SECONDS = env.int("CACHE_TTL_SECONDS", default=3600)
# Each cache call waits this long at most; after a failure the database alone answers for
# CACHE_RETRY_SECONDS.
CACHE_TIMEOUT_SECONDS = env.float("CACHE_TIMEOUT_SECONDS", default=0.25)
CACHE_RETRY_SECONDS = env.float("CACHE_RETRY_SECONDS", default=1.0)
_CACHE_BACKENDS = {
    "redis": "django.core.cache.backends.redis.RedisCache",
    "rediss": "django.core.cache.backends.redis.RedisCache",
    "memcache": "django.core.cache.backends.memcached.PyMemcacheCache",
    "pymemcache": "django.core.cache.backends.memcached.PyMemcacheCache",
}


def cache_settings(
    url: str | None, *, several_processes: bool, timeout: float, retry: float
) -> Any:
    """CACHES["default"] for a CACHE_URL (tests/test_cache.py builds theirs with it too)."""
    if not url:
        if several_processes:
            return {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}
        return {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
    scheme = urlsplit(url).scheme
    if scheme == redis_config.CLUSTER_SCHEME:
        # A Redis Cluster (web/cluster_cache.py): the seed nodes as REDIS_CLUSTER_NODES has them.
        redis_config.parse_nodes(urlsplit(url).netloc, "CACHE_URL")
        return {
            "BACKEND": "web.cluster_cache.RedisClusterCache",
            "LOCATION": url,
            "OPTIONS": {"socket_connect_timeout": timeout, "socket_timeout": timeout},
            "TIMEOUT": CACHE_TTL_SECONDS,
            "KEY_PREFIX": "chat",
        }
    if scheme not in _CACHE_BACKENDS:
        raise ImproperlyConfigured(
            f"CACHE_URL: redis://, rediss://, redis+cluster:// or memcache://, not {scheme}"
        )
    config = environ.Env.cache_url_config(url, backend=_CACHE_BACKENDS[scheme])
    config.setdefault("OPTIONS", {}).update(
        {"socket_connect_timeout": timeout, "socket_timeout": timeout}
        if scheme.startswith("redis")
        else {
            "connect_timeout": timeout,
            "timeout": timeout,
            # One client serves every thread of the process (web/cache.py): pooled sockets.
            "use_pooling": True,
            # A failed server is skipped (an error, not a silent miss) until tried again.
            "retry_attempts": 0,
            "dead_timeout": retry,
        }
    )
    return {**config, "TIMEOUT": CACHE_TTL_SECONDS, "KEY_PREFIX": "chat"}


CACHES = {
    "default": cache_settings(
        CACHE_URL,
        several_processes=bool(REDIS_URL),
        timeout=CACHE_TIMEOUT_SECONDS,
        retry=CACHE_RETRY_SECONDS,
    )
}
# Sessions: in the database, read through the cache when it is shared by every process (any
# process serves any browser, a restart logs nobody out; docs/data.md says why not `cache`).
# web/sessions.py is Django's cached_db through web/cache.py's one client and its epoch.
if CACHE_URL:
    SESSION_ENGINE = "web.sessions"

# Background work (Celery, webhooks, mention emails): project/background_settings.py.
from project.background_settings import *  # noqa: E402, F403

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]

# The admin is an OTPAdminSite (project/urls.py): staff also need a TOTP token to get in.
# `manage.py add_totp_device USERNAME` prints the otpauth:// URL to scan.
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="chat")

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# The browser client (frontend/, docs/frontend.md), served by WhiteNoise. A deployment runs
# `STATIC_HASHED=1 manage.py collectstatic`: hashed copies and a manifest in STATIC_ROOT. Once
# the manifest is there pages name the hashed files and WhiteNoise serves them with far-future
# cache headers, so STATIC_URL may be a CDN's URL (pulling from this origin). Before that
# (`make run`, a fresh checkout, in-process tests) frontend/ is served as it is, cached briefly.
STATIC_URL = env.str("STATIC_URL", default="/static/")
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "var" / "static")))
STATICFILES_DIRS = [BASE_DIR / "frontend"]
STATIC_HASHED = env.bool(
    "STATIC_HASHED", default=not DEBUG and (STATIC_ROOT / "staticfiles.json").exists()
)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # WhiteNoise's CompressedManifestStaticFilesStorage, rewriting ES module imports too.
        "BACKEND": "web.static_files.HashedStaticStorage"
        if STATIC_HASHED
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not STATIC_HASHED

# No inline scripts, inline handlers or eval anywhere: the client is static ES modules. 'self'
# in connect-src covers the page's own ws:/wss: origin (CSP Level 3, which browsers follow).
_STATIC_HOST = urlsplit(STATIC_URL)
_ASSETS = ["'self'"] + (
    [f"{_STATIC_HOST.scheme}://{_STATIC_HOST.netloc}"] if _STATIC_HOST.netloc else []
)
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": _ASSETS,
        "style-src": _ASSETS,
        "img-src": [*_ASSETS, "data:"],
        "font-src": _ASSETS,
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Production hardening; `manage.py check --deploy` is clean with SECURE=1.
if SECURE:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# Protocol limits.
WS_MAX_FRAME_BYTES = 64 * 1024
MESSAGE_MAX_CHARS = 4000
BACKFILL_BATCH = env.int("BACKFILL_BATCH", default=500)
# Publishes a process stores per transaction at most, and transactions it keeps in flight at
# once (realtime/publisher.py); each in-flight one holds a pooled database connection.
PUBLISH_BATCH_MAX = env.int("PUBLISH_BATCH_MAX", default=100)
PUBLISH_IN_FLIGHT = env.int("PUBLISH_IN_FLIGHT", default=2)
# A batch that is one statement (no sender joining a room, no mention) is stored by awaiting
# it on the event loop (psycopg's asyncio driver, PUBLISH_IN_FLIGHT more connections per
# process) rather than on a thread: a one-message batch's store took a third of the CPU, and
# the server 0.81-0.94x of its CPU per message at low rates (docs/performance.md).
STORE_ON_EVENT_LOOP = env.bool("STORE_ON_EVENT_LOOP", default=True)
# Publishes one socket may have waiting for their ack; past it the server reads no more of
# that socket until one is answered (realtime/consumers.py).
SOCKET_PUBLISHES_IN_FLIGHT = env.int("SOCKET_PUBLISHES_IN_FLIGHT", default=32)

# Structured logs (project/logs.py): one JSON object per line with the request or connection
# id, or readable lines (LOG_FORMAT=console, the default with DEBUG, as in `make run`).
LOG_FORMAT = env.str("LOG_FORMAT", default="console" if DEBUG else "json")
# Every query logged with its time (project/logs.py: log_query), for profiling; not in production.
DEBUG_SQL = env.bool("DEBUG_SQL", default=False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"structured": {"()": "project.logs.formatter", "style": LOG_FORMAT}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        # DEBUG_SQL's lines; nothing logs here unless it is on.
        "project.sql": {"level": "DEBUG"},
        # uvicorn prints through its own plain handlers: through ours instead.
        "uvicorn": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # Its access line has the raw path and no request id; web/middleware.py logs each
        # request (request id, URL pattern, status, duration) instead.
        "uvicorn.access": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
# /metrics (web/views_metrics.py) is for Prometheus scraping pods directly; the Ingress does not
# route it. With METRICS_TOKEN set it also asks for `Authorization: Bearer <METRICS_TOKEN>`.
METRICS_TOKEN = secret("METRICS_TOKEN") or ""
# The Celery worker serves its metrics on this port (project/celery.py); 0 turns that off.
CELERY_METRICS_PORT = env.int("CELERY_METRICS_PORT", default=9808)

CSRF_FAILURE_VIEW = "web.errors_views.csrf_failure"
# The API takes small JSON bodies; anything bigger is refused with 413 before parsing.
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024

# The websocket server's tunables (flood control, timeouts, fan-out, drain, presence), each
# from the environment: project/realtime_settings.py.
from project.realtime_settings import *  # noqa: E402, F403
