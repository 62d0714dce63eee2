"""`manage.py add_totp_device USERNAME`: give a user a TOTP device and print its otpauth:// URL."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_otp.plugins.otp_totp.models import TOTPDevice


class Command(BaseCommand):
    help = (
        "Create a confirmed TOTP device for a user and print its otpauth:// URL, which the "
        "operator scans into an authenticator app. The admin asks for its tokens."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="default", help="a label to recognise the device by")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(username=options["username"], is_active=True)
        except User.DoesNotExist:
            raise CommandError(f"no active user {options['username']!r}") from None
        if not user.is_staff:
            self.stderr.write(f"note: {user.get_username()} is not staff and cannot use the admin")
        # Confirmed at once: the operator hands the URL over in person, there is no enrolment step.
        device = TOTPDevice.objects.create(user=user, name=options["name"], confirmed=True)
        # The URL holds the shared secret: it goes to stdout only, for a QR code or an app.
        self.stdout.write(device.config_url)
