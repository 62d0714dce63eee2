"""Mention emails: one summary per away user of the mentions they have not read.

Run by the periodic task `web.tasks.send_mention_emails`. Rows are claimed under
`SELECT ... FOR UPDATE SKIP LOCKED` and marked in the same transaction that sends, so two
workers running the chore at once never email the same mention twice.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from web.activity import last_seen
from web.models import Notification

logger = logging.getLogger(__name__)

MENTION = "mention"
# Users handled per run; the rest wait for the next one (beat runs it every minute).
USERS_PER_RUN = 500
LISTED = 20  # mentions listed in one email; the count covers them all
EXCERPT_CHARS = 140


def due_mentions(cutoff: datetime) -> QuerySet[Notification]:
    """Unread mentions not yet emailed, created at or before the cutoff (a partial index)."""
    return Notification.objects.filter(
        kind=MENTION, read_at__isnull=True, emailed_at__isnull=True, created_at__lte=cutoff
    )


def send_mention_emails() -> int:
    """Email every user who has due mentions and no socket since the cutoff; emails sent."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.MENTION_EMAIL_AFTER_SECONDS)
    user_ids = list(
        due_mentions(cutoff).order_by().values_list("user_id", flat=True).distinct()[:USERS_PER_RUN]
    )
    if not user_ids:
        return 0
    seen = last_seen(user_ids)
    # None: presence does not know, which means no socket it heard from.
    away = [pk for pk in user_ids if (seen.get(pk) or 0.0) <= cutoff.timestamp()]
    sent = 0
    with get_connection() as mail:
        for user in get_user_model().objects.filter(pk__in=away).order_by("pk"):
            try:
                sent += _email_one(mail, user, cutoff, now)
            except (smtplib.SMTPException, OSError):
                # Rolled back: the mentions stay due and the next run tries again.
                logger.warning("mention email to user %s failed", user.pk, exc_info=True)
    return sent


def _email_one(mail: BaseEmailBackend, user: Any, cutoff: datetime, now: datetime) -> int:
    with transaction.atomic():
        # Another worker's claim is skipped; once it commits those rows are emailed_at-set and
        # no longer match (PostgreSQL re-checks the WHERE of rows changed meanwhile).
        rows = list(
            due_mentions(cutoff)
            .filter(user=user)
            .select_for_update(skip_locked=True)
            .order_by("created_at", "seq")
        )
        if not rows:
            return 0
        sent = 0
        # Without an address (or inactive) there is no one to email: marked all the same, so
        # they are not scanned again at every run.
        if user.email and user.is_active:
            sent = mail.send_messages([summary(user, rows)]) or 0
        Notification.objects.filter(pk__in=[row.pk for row in rows]).update(emailed_at=now)
        return sent


def summary(user: Any, mentions: Sequence[Notification]) -> EmailMessage:
    """The email: how many unread mentions, then room, sender and an excerpt of each."""
    count = len(mentions)
    noun = "mention" if count == 1 else "mentions"
    lines = [f"Hi {user.get_username()},", "", f"You have {count} unread {noun}:", ""]
    for mention in mentions[:LISTED]:
        lines.append(_line(mention.payload))
    if count > LISTED:
        lines.append(f"... and {count - LISTED} more.")
    return EmailMessage(
        subject=f"{count} unread {noun} in chat",
        body="\n".join(lines) + "\n",
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[user.email],
    )


def _line(payload: Any) -> str:
    data = payload if isinstance(payload, dict) else {}
    room = data.get("room") or "?"
    sender = data.get("sender") or "someone"
    text = str(data.get("excerpt") or data.get("body") or data.get("text") or "")
    text = " ".join(text.split())
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 1] + "…"
    return f"- #{room}, {sender}: {text}"
