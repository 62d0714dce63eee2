"""`manage.py add_totp_device USERNAME`: give a user a TOTP device and print its otpauth:// URL."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.actions import do_add_totp_device
from web.errors import NotFound


class Command(BaseCommand):
    help = (
        "Create a confirmed TOTP device for a user and print its otpauth:// URL, which the "
        "operator scans into an authenticator app. The admin asks for its tokens."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="default", help="a label to recognise the device by")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            device = do_add_totp_device(options["username"], options["name"])
        except NotFound:
            raise CommandError(f"no active user {options['username']!r}") from None
        if not device.user.is_staff:
            self.stderr.write(f"note: {options['username']} is not staff and cannot use the admin")
        # The URL holds the shared secret: it goes to stdout only, for a QR code or an app.
        self.stdout.write(device.config_url)
