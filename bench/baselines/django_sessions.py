"""The product's settings with Django's own cached_db sessions (bench/room_list.py compares)."""

from __future__ import annotations

from project.settings import *  # noqa: F403

SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
