"""Users' outgoing webhooks: create (the secret is shown once) and delete."""

from __future__ import annotations

import re
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from web.errors import BadRequest, NotFound
from web.models import Webhook
from web.ssrf import check_url

URL_MAX_CHARS = 2000  # Webhook.url's max_length
KIND_RE = re.compile(r"^[a-z0-9_.:-]{1,64}$")
MAX_KINDS = 20
MAX_ID = 2**63 - 1


def check_webhook_url(url: str) -> str:
    url = url.strip()
    if len(url) > URL_MAX_CHARS:
        raise BadRequest(f"url is over {URL_MAX_CHARS} characters")
    # UnsafeURL is a BadRequest: a private address, another scheme, a host that does not resolve.
    check_url(url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE)
    return url


def check_kinds(kinds: Any) -> list[str]:
    if not isinstance(kinds, list) or not all(isinstance(kind, str) for kind in kinds):
        raise BadRequest("kinds must be a list of strings")
    if len(kinds) > MAX_KINDS:
        raise BadRequest(f"kinds has more than {MAX_KINDS} entries")
    for kind in kinds:
        if not KIND_RE.match(kind):
            raise BadRequest("each kind must be 1-64 lowercase letters, digits or _.:-")
    return sorted(set(kinds))


def do_create_webhook(user: Any, url: str, kinds: Any) -> tuple[Webhook, str]:
    """A new webhook and its secret, which the caller shows once (deliveries are signed)."""
    url, kinds = check_webhook_url(url), check_kinds(kinds)
    with transaction.atomic():
        # The user's row lock: two creates at once cannot both pass the count below.
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        if Webhook.objects.filter(user=user).count() >= settings.WEBHOOK_MAX_PER_USER:
            raise BadRequest(f"at most {settings.WEBHOOK_MAX_PER_USER} webhooks per user")
        secret = secrets.token_urlsafe(32)
        webhook = Webhook.objects.create(user=user, url=url, kinds=kinds, secret=secret)
    return webhook, secret


def do_delete_webhook(user: Any, webhook_id: int) -> None:
    """Delete one of the user's webhooks (its pending deliveries stop: their rows go too)."""
    if webhook_id > MAX_ID:
        raise NotFound("no such webhook")
    deleted, _ = Webhook.objects.filter(pk=webhook_id, user=user).delete()
    if not deleted:
        # Another user's webhook answers the same as a missing one.
        raise NotFound("no such webhook")
