"""Each user's notification stream: a gap-free per-user seq, like a room's messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Q
from django.utils import timezone

# (user id, kind, index into the payloads list): a payload shared by many recipients (a
# broadcast, one message's mentions) is sent to the database once.
Draft = tuple[Any, str, int]


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


class NotificationManager(models.Manager["Notification"]):
    def store(
        self, drafts: Sequence[Draft], payloads: Sequence[dict[str, Any]]
    ) -> list[Notification]:
        """Store notifications with each user's next seqs, in order; the stored rows.

        Must run inside the caller's transaction: the inboxes stay locked until it commits,
        so each user's seqs are gap-free and commit in order.
        """
        if not drafts:
            return []
        user_ids = sorted({user_id for user_id, _, _ in drafts})
        # Every later statement finds the user's inbox row to lock and advance.
        Inbox.objects.bulk_create(
            [Inbox(user_id=user_id) for user_id in user_ids], ignore_conflicts=True
        )
        if connection.vendor == "postgresql":
            return self._store_in_one_statement(drafts, payloads)
        return self._store_portably(drafts, payloads, user_ids)

    def _store_in_one_statement(
        self, drafts: Sequence[Draft], payloads: Sequence[dict[str, Any]]
    ) -> list[Notification]:
        with connection.cursor() as cursor:
            cursor.execute(
                STORE_SQL,
                {
                    "users": [d[0] for d in drafts],
                    "kinds": [d[1] for d in drafts],
                    # 1-based: PostgreSQL arrays.
                    "which": [d[2] + 1 for d in drafts],
                    "payloads": [orjson.dumps(p).decode() for p in payloads],
                },
            )
            rows = cursor.fetchall()
        # A user's k-th draft took their k-th new seq: match them up, in the drafts' order.
        rows.sort(key=lambda row: (row[1], row[2]))
        by_user: dict[Any, list[Any]] = {}
        for row in rows:
            by_user.setdefault(row[1], []).append(row)
        taken = dict.fromkeys(by_user, 0)
        stored = []
        for user_id, kind, which in drafts:
            pk, _, seq, created_at = by_user[user_id][taken[user_id]]
            taken[user_id] += 1
            stored.append(
                Notification(
                    id=pk,
                    user_id=user_id,
                    seq=seq,
                    kind=kind,
                    payload=payloads[which],
                    created_at=created_at,
                )
            )
        return stored

    def _store_portably(
        self, drafts: Sequence[Draft], payloads: Sequence[dict[str, Any]], user_ids: list[Any]
    ) -> list[Notification]:
        """The same with the ORM, for SQLite (`make run`), whose writers are serialised:
        the inbox insert above already holds the database's write lock."""
        counts: dict[Any, int] = {}
        for user_id, _, _ in drafts:
            counts[user_id] = counts.get(user_id, 0) + 1
        with transaction.atomic():
            inboxes = list(
                Inbox.objects.select_for_update().filter(user_id__in=user_ids).order_by("user_id")
            )
            next_seq = {inbox.user_id: inbox.last_seq + 1 for inbox in inboxes}
            for inbox in inboxes:
                inbox.last_seq += counts[inbox.user_id]
            Inbox.objects.bulk_update(inboxes, ["last_seq"])
            now = timezone.now()
            fresh = []
            for user_id, kind, which in drafts:
                fresh.append(
                    Notification(
                        user_id=user_id,
                        seq=next_seq[user_id],
                        kind=kind,
                        payload=payloads[which],
                        created_at=now,
                    )
                )
                next_seq[user_id] += 1
            return self.bulk_create(fresh)

    def page_after(self, user_id: Any, after: int, limit: int) -> models.QuerySet[Notification]:
        return self.filter(user_id=user_id, seq__gt=after).order_by("seq")[:limit]

    def mark_read(self, user_id: Any, after: int, up_to: int) -> int:
        """Set read_at on the user's unread notifications with after < seq <= up_to."""
        return self.filter(
            user_id=user_id, seq__gt=after, seq__lte=up_to, read_at__isnull=True
        ).update(read_at=timezone.now())


class Notification(models.Model):
    # No separate index: the (user, seq) unique constraint leads with user (docs/data.md).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="notifications",
        db_index=False,
    )
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)
    # Mention emails (web/tasks): set once the notification went out in a summary.
    emailed_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationManager()

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
            "ts": self.created_at.isoformat().replace("+00:00", "Z"),
        }


# Notification.objects.store on PostgreSQL, like Message.objects.store_batch: each user's
# inbox advances by the number of their new notifications, which take the seqs below it. The
# inboxes are locked in user-id order first (`locked`), so two bulk notifies for overlapping
# users wait for each other instead of deadlocking; the locks are held until the caller's
# transaction commits, so seq N+1 never commits before seq N.
STORE_SQL = """
WITH given AS (
    SELECT * FROM unnest(%(users)s::bigint[], %(kinds)s::text[], %(which)s::int[])
        WITH ORDINALITY AS g(user_id, kind, which, ord)
), numbered AS (
    SELECT g.*, row_number() OVER (PARTITION BY g.user_id ORDER BY g.ord) AS n FROM given g
), counts AS (
    SELECT user_id, count(*) AS k FROM given GROUP BY user_id
), locked AS MATERIALIZED (
    SELECT i.user_id FROM web_inbox i WHERE i.user_id IN (SELECT user_id FROM counts)
    ORDER BY i.user_id FOR UPDATE
), inbox AS (
    UPDATE web_inbox i SET last_seq = i.last_seq + c.k
    FROM counts c WHERE i.user_id = c.user_id AND i.user_id IN (SELECT user_id FROM locked)
    RETURNING i.user_id, i.last_seq, c.k
), payloads AS (
    SELECT %(payloads)s::text[] AS p
)
INSERT INTO web_notification (user_id, seq, kind, payload, created_at)
SELECT n.user_id, inbox.last_seq - inbox.k + n.n, n.kind, payloads.p[n.which]::jsonb, now()
FROM numbered n JOIN inbox ON inbox.user_id = n.user_id CROSS JOIN payloads
RETURNING id, user_id, seq, created_at
"""
