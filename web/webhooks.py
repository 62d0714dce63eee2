"""Outgoing webhooks: which notifications go to which URLs (delivered by Celery tasks)."""

from __future__ import annotations

from collections.abc import Sequence


def schedule_deliveries(notification_ids: Sequence[int]) -> None:
    """After the current transaction commits, POST these notifications to matching webhooks."""
    # TODO(webhooks): being built
