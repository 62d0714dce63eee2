"""Backends that publish notifications (service keys) and the answers they were given."""

from __future__ import annotations

import secrets

from django.db import models
from django.utils import timezone

SERVICE_KEY_PREFIX = "sk_"


class ServiceKeyManager(models.Manager["ServiceKey"]):
    def issue(self, name: str) -> tuple[ServiceKey, str]:
        """Create a key and return it with its raw value, which is never stored."""
        from web.models import hash_token

        raw = SERVICE_KEY_PREFIX + secrets.token_urlsafe(32)
        return self.create(name=name, key_hash=hash_token(raw)), raw

    async def afor_raw(self, raw: str) -> ServiceKey | None:
        """The live (not revoked) key for a raw value, or None."""
        from web.models import hash_token

        return await self.filter(key_hash=hash_token(raw), revoked_at__isnull=True).afirst()


class ServiceKey(models.Model):
    """A backend's key: it may publish notifications, nothing else."""

    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ServiceKeyManager()

    def __str__(self) -> str:
        return self.name

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])


class IdempotencyKey(models.Model):
    """The first answer to a service's request with this key (kept 24 hours)."""

    # No separate index: the (service, key) unique constraint leads with service.
    service = models.ForeignKey(
        ServiceKey, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    key = models.CharField(max_length=200)
    status = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["service", "key"], name="idempotency_service_key_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.service_id}:{self.key}"
