"""Settings of background work: Celery (project/celery.py, web/tasks.py), outgoing webhooks,
mention emails. Part of the settings: project/settings.py imports every name."""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from project import redis_config
from project.environment import env, secret

# Background work (project/celery.py, web/tasks.py): webhooks, mention emails, chores.
# Without a broker tasks run eagerly in the process that sends them (`make run` needs no worker);
# a failing task then only logs, it never breaks the request that sent it.
# With REDIS_SENTINELS the broker is kombu's Sentinel transport, following the master too.
CELERY_BROKER_URL = secret("CELERY_BROKER_URL") or redis_config.redis_url(secret)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if redis_config.cluster_of(CELERY_BROKER_URL):
    # kombu has no Redis Cluster transport: running tasks eagerly in the web pods instead
    # would be a silent change of behaviour, so the start-up stops here.
    raise ImproperlyConfigured(
        "REDIS_CLUSTER_NODES: Celery cannot use a Redis Cluster as its broker; set "
        "CELERY_BROKER_URL (one Redis, sentinel://..., or amqp://...)"
    )
if _sentinel := redis_config.sentinel_of(CELERY_BROKER_URL):
    CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS = _sentinel.celery_broker()
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_IGNORE_RESULT = True  # no result backend: tasks record their outcome in the database
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A request that enqueues while the broker is down gives up within about a second (logged).
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=2.0)
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2}
# Late acks: a delivery a worker was killed in the middle of is run again (at least once).
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # keep LOGGING's format
# Celery beat's file scheduler keeps its last-run times here (a writable path).
_VAR = Path(__file__).resolve().parent.parent / "var"
CELERY_BEAT_SCHEDULE_FILENAME = env.str(
    "CELERY_BEAT_SCHEDULE_FILENAME", default=str(_VAR / "celerybeat-schedule")
)
MENTION_EMAIL_EVERY_SECONDS = env.float("MENTION_EMAIL_EVERY_SECONDS", default=60.0)
CELERY_BEAT_SCHEDULE = {
    "mention-emails": {
        "task": "web.tasks.send_mention_emails",
        "schedule": MENTION_EMAIL_EVERY_SECONDS,
    },
    "purge-idempotency-keys": {"task": "web.tasks.purge_idempotency_keys", "schedule": 3600.0},
    "purge-webhook-deliveries": {"task": "web.tasks.purge_webhook_deliveries", "schedule": 3600.0},
}

# Outgoing webhooks (web/webhooks.py). Private, loopback and link-local addresses are refused
# (SSRF, docs/security.md) unless WEBHOOK_ALLOW_PRIVATE=1, for tests and local receivers.
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", default=False)
WEBHOOK_MAX_PER_USER = env.int("WEBHOOK_MAX_PER_USER", default=10)
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=5.0)
# Tries per delivery, waiting a random 0..base*2**n seconds (full jitter) after the nth failure.
WEBHOOK_MAX_TRIES = env.int("WEBHOOK_MAX_TRIES", default=6)
WEBHOOK_RETRY_BACKOFF_SECONDS = env.float("WEBHOOK_RETRY_BACKOFF_SECONDS", default=10.0)
WEBHOOK_RETRY_BACKOFF_MAX_SECONDS = env.float("WEBHOOK_RETRY_BACKOFF_MAX_SECONDS", default=600.0)
WEBHOOK_DELIVERY_RETENTION_DAYS = env.int("WEBHOOK_DELIVERY_RETENTION_DAYS", default=7)
IDEMPOTENCY_KEY_HOURS = env.int("IDEMPOTENCY_KEY_HOURS", default=24)

# Mention emails (web/tasks.py): a user mentioned and away (no open socket) this long gets one
# summary of their unread mentions. SMTP with EMAIL_HOST, else printed to the console.
MENTION_EMAIL_AFTER_SECONDS = env.float("MENTION_EMAIL_AFTER_SECONDS", default=600.0)
EMAIL_HOST = env.str("EMAIL_HOST", default="")
EMAIL_BACKEND = env.str(
    "EMAIL_BACKEND",
    default="django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = secret("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=10.0)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="chat@localhost")
