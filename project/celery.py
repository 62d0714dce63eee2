"""The Celery app (Celery's Django layout): `celery -A project worker` runs web/tasks.py.

Its settings are the CELERY_* names in project/settings.py. Without a broker (no
CELERY_BROKER_URL or REDIS_URL) tasks run eagerly in the calling process, so
`make run` needs nothing else.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import structlog
from celery import Celery, signals  # type: ignore[import-untyped]  # Celery ships no types
from prometheus_client import start_http_server

from project import metrics

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
logger = logging.getLogger(__name__)

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Metrics (project/metrics.py): chat_celery_tasks_total{task, outcome} from Celery's signals,
# in whichever process runs the task (a prefork child, or the caller when eager). The worker
# serves them on CELERY_METRICS_PORT from its main process; with the prefork pool the children
# count into PROMETHEUS_MULTIPROC_DIR, which that server adds up (docs/operations.md).


def _task_succeeded(sender: Any = None, **kwargs: Any) -> None:
    metrics.CELERY_TASKS.labels(_name(sender), "success").inc()


def _task_failed(sender: Any = None, **kwargs: Any) -> None:
    metrics.CELERY_TASKS.labels(_name(sender), "failure").inc()


def _task_retried(sender: Any = None, **kwargs: Any) -> None:
    metrics.CELERY_TASKS.labels(_name(sender), "retry").inc()


def _name(task: Any) -> str:
    return str(getattr(task, "name", None) or "unknown")


def _bind_task(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    """The task and its id on every log line it writes (project/logs.py)."""
    structlog.contextvars.bind_contextvars(task=_name(task), task_id=task_id)


def _unbind_task(**kwargs: Any) -> None:
    structlog.contextvars.unbind_contextvars("task", "task_id")


def _serve_metrics(sender: Any = None, **kwargs: Any) -> None:
    """In the worker's main process: /metrics on CELERY_METRICS_PORT (0: off)."""
    from django.conf import settings

    port: int = settings.CELERY_METRICS_PORT
    if not port:
        return
    pool = str(getattr(sender, "pool_cls", "prefork"))  # a name here ("solo"), or a class
    if metrics.multiprocess_dir() is None and "prefork" in pool:
        logger.warning(
            "PROMETHEUS_MULTIPROC_DIR is not set: the prefork pool's task counts are not in "
            "the metrics on port %s (set it, or use --pool threads or solo)",
            port,
        )
    try:
        start_http_server(port, registry=metrics.registry())
    except OSError as error:
        # Another worker on this host has the port: run without metrics rather than not run.
        logger.error("cannot serve metrics on port %s: %s", port, error)


def _forget_child(pid: int | None = None, **kwargs: Any) -> None:
    metrics.process_exited(pid)


signals.task_success.connect(_task_succeeded)
signals.task_failure.connect(_task_failed)
signals.task_retry.connect(_task_retried)
signals.task_prerun.connect(_bind_task)
signals.task_postrun.connect(_unbind_task)
signals.worker_init.connect(_serve_metrics)
signals.worker_process_shutdown.connect(_forget_child)
