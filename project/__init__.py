"""The Django project; its Celery app is loaded with it, so @shared_task binds to it."""

from __future__ import annotations

from project.celery import app as celery_app

__all__ = ("celery_app",)
