"""Load-test provisioning: `manage.py provision_load` (docs/loadtest.md).

Bulk inserts: do_issue_token takes a few queries per user, seconds to minutes for the 10,000
users a capacity test needs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import transaction

from web import cache
from web.actions import check_room_slug
from web.errors import BadRequest, Conflict
from web.models import TOKEN_PREFIX, ApiToken, Room, hash_token


@dataclass(frozen=True)
class LoadFixture:
    tokens: list[str]
    rooms: list[str]


def do_provision_load(prefix: str, users: int, rooms: int, name: str = "load") -> LoadFixture:
    """Create users and public rooms `prefix-0..` if missing, and issue one new token per user."""
    if users < 1 or rooms < 1:
        raise BadRequest("users and rooms must be at least 1")
    # The longest name of either kind must still be a valid slug (and so a valid username).
    check_room_slug(f"{prefix}-{max(users, rooms) - 1}")
    usernames = [f"{prefix}-{i}" for i in range(users)]
    slugs = [f"{prefix}-{i}" for i in range(rooms)]
    User = get_user_model()
    with transaction.atomic():
        User.objects.bulk_create(
            # make_password(None) is an unusable password: these users can only use tokens.
            [User(username=u, password=make_password(None)) for u in usernames],
            batch_size=1000,
            ignore_conflicts=True,
        )
        active = User.objects.filter(username__in=usernames, is_active=True)
        ids = dict(active.values_list("username", "pk"))
        if len(ids) != users:
            raise Conflict(f"some {prefix}-N users exist but are inactive; pick another prefix")
        Room.objects.bulk_create(
            [Room(slug=s, title=s, private=False) for s in slugs],
            batch_size=1000,
            ignore_conflicts=True,
        )
        if Room.objects.filter(slug__in=slugs, private=True).exists():
            raise Conflict(f"some {prefix}-N rooms exist and are private; pick another prefix")
        cache.changed_rooms()
        raw = [TOKEN_PREFIX + secrets.token_urlsafe(32) for _ in usernames]
        ApiToken.objects.bulk_create(
            [
                ApiToken(user_id=ids[u], key_hash=hash_token(r), name=name)
                for u, r in zip(usernames, raw, strict=True)
            ],
            batch_size=1000,
        )
    return LoadFixture(raw, slugs)
