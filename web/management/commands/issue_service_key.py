"""`manage.py issue_service_key NAME`: print a new service key on stdout, nothing else."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.actions.notifications import do_issue_service_key
from web.errors import ApiError


class Command(BaseCommand):
    help = "Issue a key a backend publishes notifications with (POST /api/notify); print it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="which backend holds it, to recognise and revoke it by")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            raw = do_issue_service_key(options["name"])
        except ApiError as error:
            raise CommandError(error.message) from None
        self.stdout.write(raw)
