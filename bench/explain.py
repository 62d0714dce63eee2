"""The indexes of the schema and the plans that use them (docs/data.md, "Indexes").

    python -m bench.explain            # the plans, as Markdown, on stdout

Starts a throwaway PostgreSQL on a free port (never the machine's own), migrates it, seeds
it with 10,000 users and rooms, 50,000 messages (500 in each of 100 rooms), 100,000
memberships, 10,000 notifications, 10,000 API tokens, 10,000 idempotency keys and 10,000
webhook deliveries, runs ANALYZE so the
planner sees production-like tables, then EXPLAINs each query an index is kept for.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.services import start_postgres

SEED = """
INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,
                       is_staff, is_active, date_joined)
SELECT '!', false, 'u' || i, '', '', '', false, true, now() FROM generate_series(0, 9999) i;
INSERT INTO web_room (slug, title, private, owner_id, last_seq, created_at)
SELECT 'r' || i, 'Room ' || i, i % 10 = 0, (SELECT min(id) FROM auth_user) + i,
       CASE WHEN i < 100 THEN 500 ELSE 0 END, now()
FROM generate_series(0, 9999) i;
INSERT INTO web_membership (user_id, room_id, role, last_read_seq, joined_at)
SELECT u.id, r.id, 'member', 0, now()
FROM auth_user u JOIN web_room r ON (r.id + u.id) % 1000 = 0;
INSERT INTO web_message (room_id, seq, sender_id, body, client_msg_id, created_at)
SELECT r.id, s, (SELECT min(id) FROM auth_user) + (s * 7 + r.id) % 10000, 'body ' || s,
       'c' || s, now()
FROM web_room r, generate_series(1, 500) s WHERE r.last_seq = 500;
INSERT INTO web_inbox (user_id, last_seq, read_up_to) SELECT id, 10, 5 FROM auth_user;
INSERT INTO web_notification (user_id, seq, kind, payload, created_at, read_at, emailed_at)
SELECT u.id, s, CASE WHEN s % 2 = 0 THEN 'mention' ELSE 'deploy' END, '{}',
       now() - s * interval '1 hour', CASE WHEN s <= 5 THEN now() END,
       CASE WHEN s <= 8 THEN now() END
FROM (SELECT id FROM auth_user ORDER BY id LIMIT 1000) u, generate_series(1, 10) s;
INSERT INTO web_apitoken (user_id, name, key_hash, created_at)
SELECT id, '', md5(id::text) || md5('t' || id), now() FROM auth_user;
INSERT INTO web_servicekey (name, key_hash, created_at)
SELECT 's' || i, md5(i::text) || md5('s' || i), now() FROM generate_series(0, 999) i;
-- Keys over 25 hours: the hourly purge finds the oldest hour's.
INSERT INTO web_idempotencykey (service_id, key, status, response, created_at)
SELECT (SELECT min(id) FROM web_servicekey) + i % 1000, 'k' || i, 200, '{}',
       now() - i * interval '9 seconds'
FROM generate_series(0, 9999) i;
INSERT INTO web_webhook (user_id, url, kinds, secret, created_at)
SELECT user_id, 'https://example.com/' || user_id, '[]', 's', now()
FROM web_notification GROUP BY user_id;
INSERT INTO web_webhookdelivery (webhook_id, notification_id, status, attempts, error,
                                 created_at, finished_at)
SELECT w.id, n.id, 'delivered', 1, '', n.created_at, n.created_at
FROM web_webhook w JOIN web_notification n ON n.user_id = w.user_id;
ANALYZE;
"""


def setup_django(port: int) -> None:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute("CREATE DATABASE chat")
    for name in [n for n in os.environ if n.startswith(("DJANGO_", "DATABASE_", "REDIS", "CACHE"))]:
        del os.environ[name]
    os.environ.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/chat",
        DATABASE_POOL="0",
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def plans() -> list[tuple[str, str, Callable[[], str]]]:
    """(index, the query that uses it, its plan), for every index the schema keeps."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.db.models import Exists, OuterRef, Q
    from django.utils import timezone

    from web.emails import MENTION
    from web.models import (
        ApiToken,
        IdempotencyKey,
        Inbox,
        Membership,
        Message,
        Notification,
        Room,
        ServiceKey,
        Webhook,
        WebhookDelivery,
    )

    user = get_user_model().objects.order_by("pk")[10]
    room = Room.objects.order_by("pk")[10]
    message = Message.objects.filter(room=room).order_by("seq")[100]
    now = timezone.now()

    def explain(queryset: Any) -> Callable[[], str]:
        return lambda: str(queryset.explain(costs=False))

    def explain_sql(sql: str, params: list[Any]) -> Callable[[], str]:
        def run() -> str:
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (COSTS OFF) " + sql, params)
                return "\n".join(row[0] for row in cursor.fetchall())

        return run

    def members(users: Any) -> Any:
        return Membership.objects.filter(room=OuterRef("pk"), user_id=users)

    listed = Room.objects.filter(Q(private=False) | Exists(members(user.pk))).annotate(
        is_member=Exists(members(user.pk))
    )
    return [
        (
            "web_room_slug_key",
            "a room by its slug (web/access.py get_room_for_user)",
            explain(Room.objects.annotate(is_member=Exists(members(user.pk))).filter(slug="r7")),
        ),
        (
            "membership_user_room_uniq",
            "the room list (web/access.py `_listed_rooms`): is the user a member",
            explain(listed.order_by("slug")),
        ),
        (
            "membership_user_room_uniq",
            "a user's memberships (deleting a user: CASCADE)",
            explain(Membership.objects.filter(user_id__in=[user.pk])),
        ),
        (
            "web_membership_room_id_",
            "a room's members (POST /api/notify with a room; deleting a room: CASCADE)",
            explain(
                Membership.objects.filter(room=room, user__is_active=True)
                .order_by("user_id")
                .values_list("user_id", flat=True)[:1001]
            ),
        ),
        (
            "web_room_owner_id_",
            "deleting a user: their rooms' owner SET NULL",
            explain(Room.objects.filter(owner_id__in=[user.pk])),
        ),
        (
            "message_room_seq_uniq",
            "a history page, newest first (Message.objects.page_before)",
            explain(Message.objects.page_before(room.pk, 400, 51)),
        ),
        (
            "message_room_seq_uniq",
            "a catch-up after a seq (Message.objects.page_after)",
            explain(Message.objects.page_after(room.pk, 100, 51)),
        ),
        (
            "message_idempotency_uniq",
            "a retried publish finds its message (web/models store_batch, `stored`)",
            explain(
                Message.objects.filter(
                    room_id=room.pk,
                    sender_id=message.sender_id,
                    client_msg_id=message.client_msg_id,
                )
            ),
        ),
        (
            "web_message_sender_id_",
            "deleting a user: PROTECT finds their messages",
            explain(Message.objects.filter(sender_id__in=[user.pk])[:1]),
        ),
        (
            "web_apitoken_key_hash_key",
            "a token authenticates (ApiToken.objects.afor_raw)",
            explain(
                ApiToken.objects.select_related("user").filter(
                    key_hash="0" * 64, revoked_at__isnull=True, user__is_active=True
                )[:1]
            ),
        ),
        (
            "web_apitoken_user_id_",
            "deleting a user: CASCADE to their tokens",
            explain(ApiToken.objects.filter(user_id__in=[user.pk])),
        ),
        (
            "web_servicekey_key_hash_key",
            "a service key authenticates (ServiceKey.objects.afor_raw)",
            explain(ServiceKey.objects.filter(key_hash="0" * 64, revoked_at__isnull=True)[:1]),
        ),
        (
            "web_inbox_pkey",
            "a user's unread count (GET /api/me) and the inbox lock",
            explain(Inbox.objects.filter(user_id=user.pk)[:1]),
        ),
        (
            "notification_user_seq_uniq",
            "a user's notifications after a seq (Notification.objects.page_after)",
            explain(Notification.objects.page_after(user.pk, 2, 51)),
        ),
        (
            "notification_user_seq_uniq",
            "marking read (Notification.objects.mark_read; an UPDATE, planned the same)",
            explain(
                Notification.objects.filter(
                    user_id=user.pk, seq__gt=2, seq__lte=9, read_at__isnull=True
                )
            ),
        ),
        (
            "notification_unemailed_idx",
            "the mention-email chore (web/emails.py)",
            explain(
                Notification.objects.filter(
                    kind=MENTION,
                    read_at__isnull=True,
                    emailed_at__isnull=True,
                    created_at__lte=now - timedelta(minutes=10),
                ).order_by("created_at", "seq")[:100]
            ),
        ),
        (
            "web_webhook_user_id_",
            "a user's webhooks (GET /api/webhooks)",
            explain(Webhook.objects.filter(user_id=user.pk).order_by("pk")),
        ),
        (
            "delivery_webhook_notification_uniq",
            "deleting a webhook: CASCADE to its deliveries",
            explain(WebhookDelivery.objects.filter(webhook_id__in=[1])),
        ),
        (
            "web_webhookdelivery_notification_id_",
            "deleting a notification (a user's CASCADE): CASCADE to its deliveries",
            explain(WebhookDelivery.objects.filter(notification_id__in=[1])),
        ),
        (
            "idempotency_service_key_uniq",
            "a repeated idempotency key (web/actions/notifications.py `_first_answer`)",
            explain(IdempotencyKey.objects.filter(service_id=1, key="k1")[:1]),
        ),
        (
            "web_idempotencykey_created_at_",
            "the hourly purge of expired keys (web/tasks.py)",
            explain(
                IdempotencyKey.objects.filter(created_at__lt=now - timedelta(hours=24)).only("pk")
            ),
        ),
        (
            "web_webhookdelivery_created_at_",
            "the admin's delivery list, newest first (web/admin.py `ordering`)",
            explain(WebhookDelivery.objects.order_by("-created_at", "-pk")[:100]),
        ),
        (
            "web_room_pkey",
            "taking a room's next seqs (Room.objects.take_seqs)",
            explain_sql("UPDATE web_room SET last_seq = last_seq + 1 WHERE id = %s", [room.pk]),
        ),
    ]


def schema_indexes() -> list[tuple[str, str]]:
    """(table, index) of every index on the app's tables (web_*)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, indexname FROM pg_indexes"
            " WHERE schemaname = 'public' AND tablename LIKE 'web\\_%%' ORDER BY 1, 2"
        )
        return [(table, index) for table, index in cursor.fetchall()]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="explain-") as tmp:
        postgres, port = start_postgres(Path(tmp))
        try:
            setup_django(port)
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute(SEED)
            names = [index for _table, index in schema_indexes()]
            unused = []
            shown: set[str] = set()
            for prefix, query, plan in plans():
                # Django's own index names end in a hash: the entries give their prefix.
                index = next(n for n in names if n == prefix or n.startswith(prefix))
                text = plan()
                if index not in text:
                    unused.append(index)
                if index not in shown:
                    print(f"#### `{index}`\n")
                shown.add(index)
                print(f"{query}:\n\n```\n{text}\n```\n")
            for index in names:
                if not index.endswith("_pkey") and index not in shown:
                    print(f"- NOT SHOWN: `{index}`")
            for index in unused:
                print(f"- NOT USED in its plan: `{index}`")
            return 1 if unused else 0
        finally:
            postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
