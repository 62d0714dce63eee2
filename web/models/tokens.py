"""Users' API tokens: stored hashed, revocable; the raw value is shown once."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import models

if TYPE_CHECKING:
    from django.contrib.auth.models import User


TOKEN_PREFIX = "ct_"  # noqa: S105 -- a marker that makes leaked tokens greppable, not a secret


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenManager(models.Manager["ApiToken"]):
    def issue(self, user: User, name: str = "") -> tuple[ApiToken, str]:
        """Create a token and return it with its raw value, which is never stored."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = self.create(user=user, key_hash=hash_token(raw), name=name)
        return token, raw

    async def afor_raw(self, raw: str) -> ApiToken | None:
        """The live token (with its active user) for a raw value, or None."""
        return (
            await self.select_related("user")
            .filter(key_hash=hash_token(raw), revoked_at__isnull=True, user__is_active=True)
            .afirst()
        )

    async def auser_for(self, raw: str) -> Any | None:
        """The active user a raw token belongs to, or None."""
        token = await self.afor_raw(raw)
        return token.user if token else None


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100, blank=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenManager()

    def __str__(self) -> str:
        return f"token {self.pk} of user {self.user_id}"
