"""Each user's notification stream: a gap-free per-user seq, like a room's messages."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Inbox(models.Model):
    """A user's notification counter: the newest seq, and how far they have read."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="inbox"
    )
    # Incremented under the row lock inside the storing transaction: seqs are gap-free per user.
    last_seq = models.BigIntegerField(default=0)
    read_up_to = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"inbox of {self.user_id}"

    @property
    def unread(self) -> int:
        return max(0, self.last_seq - self.read_up_to)


class Notification(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)
    # Mention emails (web/tasks): set once the notification went out in a summary.
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Also the index of every read: a user's notifications after a seq, in order.
            models.UniqueConstraint(fields=["user", "seq"], name="notification_user_seq_uniq"),
        ]
        indexes = [
            # The mention-email chore: unread, not yet emailed mentions, oldest first.
            models.Index(
                fields=["created_at"],
                name="notification_unemailed_idx",
                condition=Q(kind="mention", read_at__isnull=True, emailed_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"notification {self.seq} of {self.user_id}"

    def to_frame(self) -> dict[str, object]:
        return {
            "type": "notification",
            "seq": self.seq,
            "kind": self.kind,
            "payload": self.payload,
            "ts": self.created_at.isoformat(),
        }
