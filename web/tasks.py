"""Celery tasks (project/celery.py): webhook deliveries, mention emails and periodic chores.

Beat's schedule is CELERY_BEAT_SCHEDULE in project/settings.py.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

from celery import shared_task  # type: ignore[import-untyped]  # Celery ships no types
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from web import emails
from web.models import IdempotencyKey, WebhookDelivery
from web.ssrf import UnsafeURL
from web.webhooks import body, post

logger = logging.getLogger(__name__)
# The OS's generator: no seeding shared between forked workers, and no audit noise.
_JITTER = random.SystemRandom()


def backoff(retries: int) -> float:
    """Seconds before the next try after `retries` retries: full jitter (AWS's), capped."""
    ceiling = min(
        settings.WEBHOOK_RETRY_BACKOFF_MAX_SECONDS,
        settings.WEBHOOK_RETRY_BACKOFF_SECONDS * 2**retries,
    )
    return _JITTER.uniform(0, ceiling)


# Celery's own retry_backoff takes whole seconds (at least 1); tests and tuning want fractions,
# so the countdown is computed above and passed to self.retry.
@shared_task(  # type: ignore[untyped-decorator]  # a Celery task: untyped, like the import
    bind=True, max_retries=settings.WEBHOOK_MAX_TRIES - 1, acks_late=True
)
def deliver_webhook(self: Any, delivery_id: int) -> str:
    """One try of one delivery; records its outcome and schedules the next try if any."""
    delivery = (
        WebhookDelivery.objects.select_related("webhook", "notification__user")
        .filter(pk=delivery_id, status=WebhookDelivery.Status.PENDING)
        .first()
    )
    if delivery is None:
        return "gone"  # the webhook was deleted, or a redelivered task finds it finished
    status: int | None = None
    try:
        status = post(delivery.webhook, body(delivery.notification))
        error = "" if 200 <= status < 300 else f"HTTP {status}"
    except UnsafeURL as refused:
        error = refused.message
    except OSError as failure:
        error = str(failure) or repr(failure)
    delivered = not error
    tries = self.request.retries + 1
    final = delivered or tries >= settings.WEBHOOK_MAX_TRIES
    if delivered:
        outcome = WebhookDelivery.Status.DELIVERED
    else:
        outcome = WebhookDelivery.Status.FAILED if final else WebhookDelivery.Status.PENDING
    WebhookDelivery.objects.filter(pk=delivery_id).update(
        attempts=F("attempts") + 1,
        status=outcome,
        response_status=status,
        error=error[:500],
        finished_at=timezone.now() if final else None,
    )
    if not final:
        logger.info("webhook delivery %s try %s failed: %s", delivery_id, tries, error)
        raise self.retry(
            countdown=backoff(self.request.retries), max_retries=settings.WEBHOOK_MAX_TRIES - 1
        )
    return str(outcome)


@shared_task  # type: ignore[untyped-decorator]  # a Celery task, untyped
def send_mention_emails() -> int:
    """Summaries of unread mentions for users away MENTION_EMAIL_AFTER_SECONDS (web/emails.py)."""
    return emails.send_mention_emails()


@shared_task  # type: ignore[untyped-decorator]  # a Celery task, untyped
def purge_idempotency_keys() -> int:
    """Forget services' idempotency keys after IDEMPOTENCY_KEY_HOURS (24)."""
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS)
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted


@shared_task  # type: ignore[untyped-decorator]  # a Celery task, untyped
def purge_webhook_deliveries() -> int:
    """Drop delivery records older than WEBHOOK_DELIVERY_RETENTION_DAYS."""
    cutoff = timezone.now() - timedelta(days=settings.WEBHOOK_DELIVERY_RETENTION_DAYS)
    # A pending one that old lost its task (a broker that was down); it will not finish now.
    old = Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)
    deleted, _ = WebhookDelivery.objects.filter(old).delete()
    return deleted
