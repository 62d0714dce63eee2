"""`manage.py provision_load --users N --rooms M`: users, rooms and tokens for `chat-loadtest`.

Writes {"tokens": [...], "rooms": [...]} to --out (readable by its owner only) or stdout.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.actions import do_provision_load
from web.errors import ApiError


class Command(BaseCommand):
    help = "Create load-test users PREFIX-0.., public rooms PREFIX-0.. and one token per user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--users", type=int, required=True, help="how many users (and tokens)")
        parser.add_argument("--rooms", type=int, required=True, help="how many public rooms")
        parser.add_argument("--prefix", default="load", help="name prefix (default: load)")
        parser.add_argument("--out", help="write the JSON here instead of stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        try:
            fixture = do_provision_load(options["prefix"], options["users"], options["rooms"])
        except ApiError as error:
            raise CommandError(error.message) from None
        text = json.dumps({"tokens": fixture.tokens, "rooms": fixture.rooms})
        if options["out"]:
            # The file holds live credentials: create it readable by its owner only.
            fd = os.open(options["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text + "\n")
        else:
            self.stdout.write(text)
        # The summary goes to stderr so that stdout stays pure JSON.
        self.stderr.write(
            f"provisioned {len(fixture.tokens)} tokens and {len(fixture.rooms)} rooms "
            f"in {time.monotonic() - started:.1f}s"
        )
