"""`manage.py demo_users`: (re)create alice and bob for local runs and print how to use them."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from web.actions import do_issue_token

DEMO_USERS = ("alice", "bob")


class Command(BaseCommand):
    help = "Create the demo users alice and bob with fresh passwords and tokens (local use only)."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        self.stdout.write("Demo users (new passwords each run; log in at /accounts/login/):")
        for name in DEMO_USERS:
            password = secrets.token_urlsafe(9)
            user, _ = User.objects.get_or_create(username=name)
            user.set_password(password)
            user.save()
            token = do_issue_token(name, name="demo")
            self.stdout.write(f"  {name:6} password: {password}   token: {token}")
