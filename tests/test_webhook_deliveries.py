"""Outgoing webhooks delivered: signed, retried with backoff, given up on, checked again
at delivery, and shown in the admin.

Deliveries go to a real HTTP server on loopback (tests/receivers.py). Without a broker
(these tests) tasks run eagerly on a thread of their own, so a retry follows at once.
Notifications are committed rows: the delivering thread has its own database connection.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.receivers import HttpReceiver, http_receiver, verify
from web import webhooks
from web.actions.webhooks import do_create_webhook
from web.models import Inbox, Notification, WebhookDelivery

WAIT_SECONDS = 30.0


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver() as started:
        yield started


def notify(user: Any, *kinds: str) -> list[int]:
    """Store notifications the way the notifications action does, and schedule deliveries."""
    with transaction.atomic():
        inbox, _ = Inbox.objects.select_for_update().get_or_create(user=user)
        rows = []
        for kind in kinds:
            inbox.last_seq += 1
            rows.append(
                Notification.objects.create(
                    user=user,
                    seq=inbox.last_seq,
                    kind=kind,
                    payload={"room": "general", "sender": "bob", "excerpt": f"a {kind}"},
                )
            )
        inbox.save(update_fields=["last_seq"])
        webhooks.schedule_deliveries([row.pk for row in rows])
    return [row.pk for row in rows]


def wait_finished(count: int) -> list[WebhookDelivery]:
    """The deliveries once `count` have finished (the delivering thread records the outcome
    right after the receiver answers; nothing to await across the connection)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        done = list(WebhookDelivery.objects.filter(finished_at__isnull=False).order_by("pk"))
        if len(done) >= count:
            return done
        assert time.monotonic() < deadline, f"{len(done)} of {count} deliveries finished"
        time.sleep(0.02)  # polling the database: bounded by the deadline above


@pytest.mark.django_db(transaction=True)
def test_matching_notifications_are_delivered_signed(
    alice: Any, bob: Any, receiver: HttpReceiver, allow_private: None
) -> None:
    hook, secret = do_create_webhook(alice, receiver.url, ["mention"])
    do_create_webhook(bob, receiver.url, [])  # Bob's: none of his notifications here
    mention, _other = notify(alice, "mention", "broadcast")

    (request,) = receiver.wait_for(1)
    (delivery,) = wait_finished(1)
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert verify(secret, request.headers["x-chat-signature"], request.body)
    sent = json.loads(request.body)
    stored = Notification.objects.get(pk=mention)
    assert sent == {
        "id": mention,
        "seq": 1,
        "kind": "mention",
        "payload": {"room": "general", "sender": "bob", "excerpt": "a mention"},
        "ts": stored.to_frame()["ts"],
        "user": "alice",
    }
    t = int(request.headers["x-chat-signature"].split(",")[0].removeprefix("t="))
    assert abs(t - time.time()) < 60
    assert (delivery.webhook_id, delivery.notification_id) == (hook.pk, mention)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 1, 200)
    assert WebhookDelivery.objects.count() == 1  # the broadcast was not of a wanted kind


@pytest.mark.django_db(transaction=True)
def test_scheduling_takes_the_same_queries_for_more_notifications(
    alice: Any, receiver: HttpReceiver, allow_private: None
) -> None:
    do_create_webhook(alice, receiver.url, [])
    do_create_webhook(alice, receiver.url, ["mention"])
    counts = []
    for size in (1, 6):
        with transaction.atomic():
            Inbox.objects.get_or_create(user=alice)
            first = Notification.objects.filter(user=alice).count() + 1
            ids = [
                Notification.objects.create(user=alice, seq=first + i, kind="mention").pk
                for i in range(size)
            ]
        with CaptureQueriesContext(connection) as scheduling, transaction.atomic():
            webhooks.schedule_deliveries(ids)
        # The on_commit callback ran as the block committed, on this connection.
        statements = [q["sql"] for q in scheduling.captured_queries]
        counts.append(len([sql for sql in statements if sql not in ("BEGIN", "COMMIT")]))
        wait_finished(WebhookDelivery.objects.count())
    assert counts[0] == counts[1] == 3, counts
    assert WebhookDelivery.objects.count() == 2 * (1 + 6)
    receiver.wait_for(14)


@pytest.mark.django_db(transaction=True)
def test_a_failing_receiver_is_retried_until_it_accepts(alice: Any, allow_private: None) -> None:
    with http_receiver(statuses=[500, 503]) as receiver:
        _hook, secret = do_create_webhook(alice, receiver.url, [])
        notify(alice, "mention")
        requests = receiver.wait_for(3)
        (delivery,) = wait_finished(1)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 3, 200)
    assert delivery.error == ""
    assert all(verify(secret, r.headers["x-chat-signature"], r.body) for r in requests)
    assert len({r.body for r in requests}) == 1


@pytest.mark.django_db(transaction=True)
def test_a_delivery_gives_up_after_six_tries(alice: Any, allow_private: None) -> None:
    with http_receiver(statuses=[500] * 10) as receiver:
        do_create_webhook(alice, receiver.url, [])
        notify(alice, "mention")
        (delivery,) = wait_finished(1)
        assert len(receiver.requests) == 6
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("failed", 6, 500)
    assert delivery.error == "HTTP 500"
    assert delivery.finished_at is not None
    assert delivery.finished_at <= timezone.now()


@pytest.mark.django_db(transaction=True)
def test_the_address_is_checked_again_at_delivery(
    alice: Any, receiver: HttpReceiver, settings: Any
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    do_create_webhook(alice, receiver.url, [])
    settings.WEBHOOK_ALLOW_PRIVATE = False
    notify(alice, "mention")
    (delivery,) = wait_finished(1)
    assert delivery.status == "failed"
    assert "127.0.0.1" in delivery.error
    assert receiver.requests == []


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_receiver_fails_without_breaking_the_caller(
    alice: Any, allow_private: None, settings: Any
) -> None:
    settings.WEBHOOK_MAX_TRIES = 2
    with http_receiver() as receiver:
        url = receiver.url
    do_create_webhook(alice, url, [])  # its server is gone: connections are refused
    notify(alice, "mention")
    (delivery,) = wait_finished(1)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("failed", 2, None)
    assert "refused" in delivery.error.lower()


def test_the_admin_shows_deliveries_but_not_secrets(
    admin_client: Client, alice: Any, allow_private: None
) -> None:
    hook, secret = do_create_webhook(alice, "http://127.0.0.1:9/hook", [])
    Inbox.objects.create(user=alice, last_seq=1)
    note = Notification.objects.create(user=alice, seq=1, kind="mention")
    WebhookDelivery.objects.create(
        webhook=hook, notification=note, status="delivered", attempts=3, response_status=200
    )
    listing = admin_client.get("/admin/web/webhookdelivery/?status__exact=delivered")
    assert listing.status_code == 200
    assert b"delivered" in listing.content
    page = admin_client.get(f"/admin/web/webhook/{hook.pk}/change/")
    assert page.status_code == 200
    assert b"127.0.0.1:9/hook" in page.content
    assert secret.encode() not in page.content
    assert secret.encode() not in admin_client.get("/admin/web/webhook/").content
