"""POST /api/notify: backends notify users with a service key, once per idempotency key."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tests.conftest import CaptureEvents
from web import actions
from web.actions import notifications
from web.models import IdempotencyKey, Inbox, Notification, ServiceKey

pytestmark = pytest.mark.django_db


@pytest.fixture
def service_key(db: None) -> str:
    return notifications.do_issue_service_key("billing")


def notify(client: Client, key: str, data: Any) -> Any:
    return client.post(
        "/api/notify", data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )


def test_it_notifies_users_and_lists_the_unknown(
    client: Client, service_key: str, alice: Any, bob: Any, capture_events: CaptureEvents
) -> None:
    with capture_events(2) as captured:
        response = notify(
            client,
            service_key,
            {"users": ["alice", "zed", "bob", "alice"], "kind": "invoice", "payload": {"n": 1}},
        )
    assert response.status_code == 200
    assert response.json() == {"notified": 2, "unknown": ["zed"]}
    assert sorted(Notification.objects.values_list("user__username", "seq", "kind")) == [
        ("alice", 1, "invoice"),
        ("bob", 1, "invoice"),
    ]
    assert {group for group, _ in captured} == {f"user.{alice.pk}", f"user.{bob.pk}"}


def test_it_notifies_a_rooms_members(
    client: Client, service_key: str, alice: Any, bob: Any, charlie: Any
) -> None:
    den = actions.do_create_room(alice, "den", "Den", private=True)
    actions.do_add_member(alice, den, "bob")
    response = notify(client, service_key, {"room": "den", "kind": "deploy"})
    assert response.json() == {"notified": 2, "unknown": []}
    assert sorted(Notification.objects.values_list("user__username", flat=True)) == [
        "alice",
        "bob",
    ]
    assert notify(client, service_key, {"room": "nope", "kind": "x"}).status_code == 404


def test_its_queries_do_not_grow_with_the_users(client: Client, service_key: str) -> None:
    User = get_user_model()
    User.objects.bulk_create([User(username=f"u{i}") for i in range(1000)])

    def queries(users: list[str], key: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            response = notify(
                client, service_key, {"users": users, "kind": "k", "idempotency_key": key}
            )
        assert response.json()["notified"] == len(users)
        return len(captured)

    assert queries(["u0"], "one") == queries([f"u{i}" for i in range(1000)], "thousand")
    assert Notification.objects.count() == 1001


def test_the_same_idempotency_key_answers_the_same_and_stores_nothing_new(
    client: Client, service_key: str, alice: Any, bob: Any
) -> None:
    data = {"users": ["alice", "nobody"], "kind": "k", "idempotency_key": "req-1"}
    first = notify(client, service_key, data)
    again = notify(client, service_key, {**data, "users": ["bob"]})
    assert again.json() == first.json() == {"notified": 1, "unknown": ["nobody"]}
    assert again["Idempotent-Replayed"] == "true"
    assert list(Notification.objects.values_list("user__username", flat=True)) == ["alice"]
    # Another service's key of the same name is its own.
    other = notifications.do_issue_service_key("shop")
    assert notify(client, other, data).json() == {"notified": 1, "unknown": ["nobody"]}
    assert Notification.objects.count() == 2


def test_an_expired_idempotency_key_can_be_used_again(
    client: Client, service_key: str, alice: Any
) -> None:
    data = {"users": ["alice"], "kind": "k", "idempotency_key": "req-1"}
    notify(client, service_key, data)
    IdempotencyKey.objects.update(
        created_at=IdempotencyKey.objects.get().created_at.replace(year=2000)
    )
    assert "Idempotent-Replayed" not in notify(client, service_key, data)
    assert Notification.objects.count() == 2


def test_a_concurrent_duplicate_loses_on_the_constraint_and_gets_the_first_answer(
    service_key: str, alice: Any, bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = ServiceKey.objects.get()
    request = notifications.check_notify(
        {"users": ["alice"], "kind": "k", "idempotency_key": "req-1"}
    )
    first = notifications.do_notify(service, request)
    # The duplicate looked before the first committed: it saw no key, and stores everything.
    real = notifications._first_answer
    looks = []

    def first_answer(service: ServiceKey, key: str) -> Any:
        looks.append(key)
        return None if len(looks) == 1 else real(service, key)

    monkeypatch.setattr(notifications, "_first_answer", first_answer)
    duplicate = notifications.check_notify(
        {"users": ["alice", "bob"], "kind": "k", "idempotency_key": "req-1"}
    )
    second = notifications.do_notify(service, duplicate)
    assert (second.response, second.replayed) == (first.response, True)
    assert len(looks) == 2  # it looked again after losing on the constraint
    # Nothing of the duplicate was stored, seqs included.
    assert list(Notification.objects.values_list("user__username", "seq")) == [("alice", 1)]
    assert not Inbox.objects.filter(user=bob).exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "k"}, "either users"),
        ({"users": ["alice"], "room": "general", "kind": "k"}, "either users"),
        ({"users": "alice", "kind": "k"}, "list of usernames"),
        ({"users": [], "kind": "k"}, "1 to 1000"),
        ({"users": [f"u{i}" for i in range(1001)], "kind": "k"}, "1 to 1000"),
        ({"users": ["alice"], "kind": ""}, "kind"),
        ({"users": ["alice"], "kind": "a b"}, "kind"),
        ({"users": ["alice"], "kind": "k", "payload": [1]}, "JSON object"),
        ({"users": ["alice"], "kind": "k", "payload": {"x": "y" * 16384}}, "16384 bytes"),
        ({"users": ["alice"], "kind": "k", "payload": {"x": "\x00"}}, "NUL"),
        ({"users": ["alice"], "kind": "k", "idempotency_key": ""}, "idempotency_key"),
        ({"users": ["alice"], "kind": "k", "idempotency_key": 5}, "idempotency_key"),
    ],
)
def test_it_refuses_bad_input_whole(
    client: Client, service_key: str, alice: Any, data: Any, message: str
) -> None:
    response = notify(client, service_key, data)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert not Notification.objects.exists()
    assert not IdempotencyKey.objects.exists()


def test_it_refuses_non_json(client: Client, service_key: str) -> None:
    response = client.post(
        "/api/notify",
        "nope",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {service_key}",
    )
    assert response.status_code == 400
    assert client.get("/api/notify", HTTP_AUTHORIZATION=f"Bearer {service_key}").status_code == 405


def test_only_a_live_service_key_may_notify(client: Client, service_key: str, alice: Any) -> None:
    data = {"users": ["alice"], "kind": "k"}
    user_token = actions.do_issue_token("alice")
    assert notify(client, user_token, data).status_code == 401
    assert notify(client, "sk_forged", data).status_code == 401
    client.force_login(alice)
    assert client.post("/api/notify", data, content_type="application/json").status_code == 401
    notifications.do_revoke_service_keys(ServiceKey.objects.all())
    assert notify(Client(), service_key, data).status_code == 401
    assert not Notification.objects.exists()
