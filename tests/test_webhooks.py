"""Outgoing webhooks: the API, the SSRF guard, the signature, and deliveries with retries.

Deliveries go to a real HTTP server on loopback (tests/receivers.py). Without a broker
(these tests) tasks run eagerly on a thread of their own, so a retry follows at once.
"""

from __future__ import annotations

import hashlib
import hmac
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
from web import actions, webhooks
from web.actions.webhooks import do_create_webhook
from web.models import Inbox, Notification, Webhook, WebhookDelivery
from web.ssrf import UnsafeURL, check_url, is_public
from web.tasks import backoff

WAIT_SECONDS = 30.0


@pytest.fixture
def as_alice(alice: Any) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {actions.do_issue_token('alice')}"}


@pytest.fixture
def as_bob(bob: Any) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {actions.do_issue_token('bob')}"}


@pytest.fixture
def allow_private(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver() as started:
        yield started


def create(client: Client, headers: dict[str, Any], data: Any) -> Any:
    return client.post("/api/webhooks", data, content_type="application/json", **headers)


def error_code(response: Any) -> str:
    assert response["Content-Type"] == "application/json"
    code: str = response.json()["error"]["code"]
    return code


# The API


def test_it_creates_lists_and_deletes_a_webhook(client: Client, as_alice: dict[str, Any]) -> None:
    created = create(client, as_alice, {"url": "https://93.184.216.34/hook", "kinds": ["mention"]})
    assert created.status_code == 201, created.content
    data = created.json()
    assert set(data) == {"id", "url", "kinds", "created_at", "secret"}
    assert len(data["secret"]) >= 40
    assert Webhook.objects.get(pk=data["id"]).secret == data["secret"]

    listed = client.get("/api/webhooks", **as_alice).json()["webhooks"]
    assert listed == [{k: v for k, v in data.items() if k != "secret"}]

    assert client.delete(f"/api/webhooks/{data['id']}", **as_alice).status_code == 204
    assert client.get("/api/webhooks", **as_alice).json() == {"webhooks": []}


def test_kinds_default_to_every_kind(client: Client, as_alice: dict[str, Any]) -> None:
    created = create(client, as_alice, {"url": "http://93.184.216.34/"})
    assert created.status_code == 201
    assert created.json()["kinds"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"kinds": ["mention"]},
        {"url": 7},
        {"url": "ftp://93.184.216.34/x"},
        {"url": "93.184.216.34/x"},
        {"url": "http:///nohost"},
        {"url": "http://user:pw@93.184.216.34/"},
        {"url": "http://93.184.216.34:99999/"},
        {"url": "https://93.184.216.34/" + "a" * 2000},
        {"url": "https://93.184.216.34/", "kinds": "mention"},
        {"url": "https://93.184.216.34/", "kinds": [1]},
        {"url": "https://93.184.216.34/", "kinds": ["Not A Kind!"]},
        {"url": "https://93.184.216.34/", "kinds": ["k"] * 21},
        {"url": "https://no-such-host.invalid/"},
    ],
)
def test_it_refuses_bad_input_with_a_json_400(
    client: Client, as_alice: dict[str, Any], body: dict[str, Any]
) -> None:
    response = create(client, as_alice, body)
    assert response.status_code == 400, response.content
    assert error_code(response) == "bad_request"
    assert not Webhook.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
    ],
)
def test_it_refuses_private_addresses_without_the_flag(
    client: Client, as_alice: dict[str, Any], url: str
) -> None:
    response = create(client, as_alice, {"url": url})
    assert response.status_code == 400, response.content
    assert error_code(response) == "bad_request"
    assert "address" in response.json()["error"]["message"]
    assert not Webhook.objects.exists()


def test_the_flag_allows_a_local_receiver(
    client: Client, as_alice: dict[str, Any], allow_private: None
) -> None:
    assert create(client, as_alice, {"url": "http://localhost:9/hook"}).status_code == 201


def test_webhooks_per_user_are_limited(
    client: Client, as_alice: dict[str, Any], settings: Any
) -> None:
    settings.WEBHOOK_MAX_PER_USER = 2
    for _ in range(2):
        assert create(client, as_alice, {"url": "https://93.184.216.34/"}).status_code == 201
    response = create(client, as_alice, {"url": "https://93.184.216.34/"})
    assert response.status_code == 400
    assert Webhook.objects.count() == 2


def test_another_users_webhook_is_not_found(
    client: Client, as_alice: dict[str, Any], as_bob: dict[str, Any]
) -> None:
    hook_id = create(client, as_alice, {"url": "https://93.184.216.34/"}).json()["id"]
    assert client.get("/api/webhooks", **as_bob).json() == {"webhooks": []}
    response = client.delete(f"/api/webhooks/{hook_id}", **as_bob)
    assert response.status_code == 404
    assert error_code(response) == "not_found"
    assert client.delete(f"/api/webhooks/{2**64}", **as_bob).status_code == 404
    assert Webhook.objects.filter(pk=hook_id).exists()


def test_it_requires_authentication(client: Client, db: None) -> None:
    assert client.get("/api/webhooks").status_code == 401
    assert client.delete("/api/webhooks/1").status_code == 401


# The SSRF guard


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),  # noqa: S104 -- an address to refuse, not one to bind
        ("255.255.255.255", False),
        ("240.0.0.1", False),
        ("224.0.0.251", False),
        ("::1", False),
        ("::", False),
        ("fe80::1%1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_localhost_is_refused_unless_allowed() -> None:
    with pytest.raises(UnsafeURL, match="localhost resolves to"):
        check_url("http://localhost:8080/x", allow_private=False)
    target = check_url("http://localhost:8080/x?y=1", allow_private=True)
    assert (target.host, target.port, target.path) == ("localhost", 8080, "/x?y=1")
    assert not is_public(target.address)


def test_a_public_literal_address_is_kept_for_the_connection() -> None:
    target = check_url("https://93.184.216.34/a", allow_private=False)
    assert (target.scheme, target.address, target.port) == ("https", "93.184.216.34", 443)


# Signing and the backoff


def test_the_signature_is_an_hmac_of_the_timestamp_and_body() -> None:
    body = b'{"id":1}'
    header = webhooks.sign("s3cret", body, 1700000000)
    t, v1 = header.split(",")
    assert t == "t=1700000000"
    expected = hmac.new(b"s3cret", b'1700000000.{"id":1}', hashlib.sha256).hexdigest()
    assert v1 == f"v1={expected}"
    assert verify("s3cret", header, body)
    assert not verify("other", header, body)
    assert not verify("s3cret", header, body + b" ")


def test_the_backoff_is_exponential_with_full_jitter(settings: Any) -> None:
    settings.WEBHOOK_RETRY_BACKOFF_SECONDS = 1.0
    settings.WEBHOOK_RETRY_BACKOFF_MAX_SECONDS = 10.0
    for retries, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)]:
        waits = [backoff(retries) for _ in range(200)]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling / 2  # spread over the range, not a fixed wait
        assert min(waits) < ceiling / 2


# Deliveries (committed rows: the delivering thread has its own database connection)


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
