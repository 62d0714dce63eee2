"""The Celery app (Celery's Django layout): `celery -A project worker` runs web/tasks.py.

Its settings are the CELERY_* names in project/settings.py. Without a broker (no
CELERY_BROKER_URL or REDIS_URL) tasks run eagerly in the calling process, so
`make run` needs nothing else.
"""

from __future__ import annotations

import os

from celery import Celery  # type: ignore[import-untyped]  # Celery ships no type information

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
