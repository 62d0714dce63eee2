"""Periodic chores (web/tasks.py): mention emails to a real SMTP server on loopback, purges."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.locks import locked_elsewhere
from tests.receivers import Mailbox, smtp_server
from web import emails
from web.models import IdempotencyKey, Inbox, Notification, ServiceKey, Webhook, WebhookDelivery
from web.tasks import purge_idempotency_keys, purge_webhook_deliveries, send_mention_emails

AWAY = timedelta(minutes=11)  # past MENTION_EMAIL_AFTER_SECONDS (600)


@pytest.fixture
def mailbox(settings: Any) -> Iterator[Mailbox]:
    with smtp_server() as started:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST = "127.0.0.1"
        settings.EMAIL_PORT = started.port
        settings.EMAIL_USE_TLS = False
        yield started


def mention(user: Any, *, age: timedelta = AWAY, kind: str = "mention", **fields: Any) -> Any:
    inbox, _ = Inbox.objects.get_or_create(user=user)
    inbox.last_seq += 1
    inbox.save(update_fields=["last_seq"])
    return Notification.objects.create(
        user=user,
        seq=inbox.last_seq,
        kind=kind,
        payload={
            "room": "general",
            "sender": "bob",
            "excerpt": f"hey @{user.username} #{inbox.last_seq}",
        },
        created_at=timezone.now() - age,
        **fields,
    )


def with_email(user: Any) -> Any:
    user.email = f"{user.username}@example.com"
    user.save(update_fields=["email"])
    return user


def test_an_away_user_gets_one_summary_of_unread_mentions(
    alice: Any, bob: Any, mailbox: Mailbox
) -> None:
    with_email(alice)
    first, second = mention(alice), mention(alice, age=AWAY * 2)
    fresh = mention(alice, age=timedelta(minutes=1))  # not away long enough yet
    read = mention(alice, read_at=timezone.now())
    other = mention(alice, kind="broadcast")

    assert send_mention_emails() == 1
    (message,) = mailbox.wait_for(1)
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "2 unread mentions in chat"
    text = message.get_payload()
    assert "You have 2 unread mentions" in text
    assert f"- #general, bob: hey @alice #{first.seq}" in text
    assert f"#{second.seq}" in text
    assert f"#{fresh.seq}" not in text
    emailed = set(
        Notification.objects.filter(emailed_at__isnull=False).values_list("pk", flat=True)
    )
    assert emailed == {first.pk, second.pk}
    assert {fresh.pk, read.pk, other.pk}.isdisjoint(emailed)

    assert send_mention_emails() == 0  # nothing twice
    assert len(mailbox.messages) == 1


def test_users_without_an_address_are_marked_not_emailed(
    alice: Any, bob: Any, mailbox: Mailbox
) -> None:
    with_email(alice)
    mention(alice)
    skipped = mention(bob)
    assert send_mention_emails() == 1
    assert [m["To"] for m in mailbox.wait_for(1)] == ["alice@example.com"]
    skipped.refresh_from_db()
    assert skipped.emailed_at is not None  # so the chore does not scan it again


def test_a_user_seen_recently_is_not_emailed(
    alice: Any, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Presence (web/activity.py) is another part; here it reports a socket open now.
    now = timezone.now().timestamp()
    monkeypatch.setattr(emails, "last_seen", lambda ids: dict.fromkeys(ids, now))
    with_email(alice)
    waiting = mention(alice)
    assert send_mention_emails() == 0
    waiting.refresh_from_db()
    assert waiting.emailed_at is None
    assert mailbox.messages == []


def test_a_failing_smtp_server_leaves_mentions_due(alice: Any, settings: Any) -> None:
    with smtp_server() as gone:
        port = gone.port
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    with_email(alice)
    waiting = mention(alice)
    with pytest.raises(ConnectionRefusedError):  # the task fails; Celery logs it
        send_mention_emails()
    waiting.refresh_from_db()
    assert waiting.emailed_at is None


@pytest.mark.django_db(transaction=True)
def test_mentions_another_worker_holds_are_skipped(alice: Any, mailbox: Mailbox) -> None:
    with_email(alice)
    mention(alice)
    # Another worker's claim on the mention.
    with locked_elsewhere(lambda: len(Notification.objects.select_for_update().filter(user=alice))):
        assert send_mention_emails() == 0  # claimed by the other worker: skipped, not awaited
    assert mailbox.messages == []
    # The other worker let go without emailing; the next run does.
    assert send_mention_emails() == 1
    assert len(mailbox.wait_for(1)) == 1


def test_idempotency_keys_are_purged_after_a_day(db: None) -> None:
    service, _raw = ServiceKey.objects.issue("backend")
    old = IdempotencyKey.objects.create(
        service=service,
        key="old",
        status=200,
        response={},
        created_at=timezone.now() - timedelta(hours=25),
    )
    kept = IdempotencyKey.objects.create(
        service=service,
        key="new",
        status=200,
        response={},
        created_at=timezone.now() - timedelta(hours=23),
    )
    assert purge_idempotency_keys() == 1
    assert list(IdempotencyKey.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not IdempotencyKey.objects.filter(pk=old.pk).exists()


def test_old_delivery_records_are_purged(alice: Any) -> None:
    hook = Webhook.objects.create(user=alice, url="https://93.184.216.34/", secret="s")
    now = timezone.now()

    def delivery(age_days: float, finished: bool) -> WebhookDelivery:
        created = now - timedelta(days=age_days)
        return WebhookDelivery.objects.create(
            webhook=hook,
            notification=mention(alice),
            created_at=created,
            finished_at=created if finished else None,
        )

    old_done, old_stuck = delivery(8, True), delivery(8, False)
    recent_done, recent_pending = delivery(6, True), delivery(0, False)
    assert purge_webhook_deliveries() == 2
    left = set(WebhookDelivery.objects.values_list("pk", flat=True))
    assert left == {recent_done.pk, recent_pending.pk}
    assert {old_done.pk, old_stuck.pk}.isdisjoint(left)


def test_beat_runs_every_chore(settings: Any) -> None:
    from project.celery import app

    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled == {
        "web.tasks.send_mention_emails",
        "web.tasks.purge_idempotency_keys",
        "web.tasks.purge_webhook_deliveries",
    }
    assert scheduled <= set(app.tasks)
    assert app.conf.beat_schedule == settings.CELERY_BEAT_SCHEDULE
