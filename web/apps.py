from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings


class WebConfig(AppConfig):
    name = "web"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from web import receivers  # noqa: F401 -- connects the receivers on Django's User

        if settings.DEBUG_SQL:
            from django.db.backends.signals import connection_created

            from project.logs import time_queries

            connection_created.connect(time_queries)
