"""Users' outgoing webhooks, and the record of each delivery."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Webhook(models.Model):
    """POST the owner's notifications of these kinds to a URL, signed with the secret."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks"
    )
    url = models.URLField(max_length=2000)
    kinds = models.JSONField(default=list)  # notification kinds; empty: every kind
    # Shown once at creation; kept because every delivery is signed with it (like Stripe's).
    secret = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"webhook {self.pk} of {self.user_id}"

    def wants(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds


class WebhookDelivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    # No separate index: the (webhook, notification) unique constraint leads with webhook.
    webhook = models.ForeignKey(
        Webhook, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    notification = models.ForeignKey("web.Notification", on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["webhook", "notification"], name="delivery_webhook_notification_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} ({self.status})"
