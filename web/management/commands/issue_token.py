"""`manage.py issue_token USERNAME [--create]`: print a fresh API token on stdout, nothing else."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.actions import do_issue_token
from web.errors import NotFound


class Command(BaseCommand):
    help = "Issue an API token for a user and print it on stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--create", action="store_true", help="create the user if missing")
        parser.add_argument("--name", default="cli", help="a label to recognise the token by")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            raw = do_issue_token(
                options["username"], create=options["create"], name=options["name"]
            )
        except NotFound as error:
            raise CommandError(f"{error.message} (pass --create to create it)") from None
        self.stdout.write(raw)
