"""Every view and every action takes a pinned number of queries (docs/data.md, "Queries").

A change that adds a query (an N+1 most of all) fails here first. Lists and history pages
take as many queries for 50 rows as for 1. Counts are with a cold cache (web/cache.py): a
warm one saves the room check's query, which tests/test_cache.py pins.

Pinned elsewhere already, not repeated here:
- tests/test_views.py: GET /api/rooms (2) and a history page of 7 (2), the room cached warm.
- tests/test_cache.py: the room list and the room check, cold and warm, 1 and 30 rooms.
- tests/test_actions.py: do_send_messages, a batch of 50 members' messages (1, PostgreSQL).
- tests/test_notifications.py: mentions, as many queries for 6 as for 1.
- tests/test_notify_api.py: POST /api/notify, as many queries for 1,000 users as for 1.
- tests/test_webhooks.py: schedule_deliveries, 3 for 1 notification and for 6.
- tests/test_provision_load.py: do_provision_load, at most 50 for 10,000 users.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from web import actions
from web.actions import notifications as notify_actions
from web.actions import presence as presence_actions
from web.actions import webhooks as webhook_actions
from web.models import ApiToken, Room, ServiceKey

pytestmark = pytest.mark.django_db


def sql(call: Callable[[], Any]) -> list[str]:
    """The statements `call` sends, with a cold cache."""
    cache.clear()
    with CaptureQueriesContext(connection) as captured:
        call()
    return [q["sql"] for q in captured.captured_queries]


def queries(call: Callable[[], Any]) -> int:
    return len(sql(call))


def users(prefix: str, n: int) -> list[Any]:
    User = get_user_model()
    return list(User.objects.bulk_create([User(username=f"{prefix}{i}") for i in range(n)]))


def bearer(username: str) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {actions.do_issue_token(username)}"}


def post(client: Client, path: str, data: Any, **extra: Any) -> Any:
    return client.post(path, data, content_type="application/json", **extra)


@pytest.fixture
def den(alice: Any, bob: Any) -> Room:
    """Alice's private room, with Bob as a member and a message in it."""
    room = actions.do_create_room(alice, "den", "Alice's den", private=True)
    actions.do_add_member(alice, room, "bob")
    actions.do_send_message(alice, room, "hello", "c0")
    room.refresh_from_db()
    return room


@pytest.fixture
def service_key(db: None) -> str:
    return notify_actions.do_issue_service_key("backend")


def pinned(call: Callable[[], Any], expected: int) -> None:
    statements = sql(call)
    assert len(statements) == expected, "\n".join(statements)


# --- Views: one request each, token-authenticated (1 query), cache cold ---------------------
# Counts include the SAVEPOINT/RELEASE pairs an atomic block sends inside a test's
# transaction (in production: BEGIN/COMMIT around it, or nothing when it commits by itself).

VIEWS = [
    ("GET /api/me", 2),  # the token, the inbox
    ("GET /api/rooms", 2),  # the token, the list
    ("POST /api/rooms", 5),  # the token, savepoint, room, owner's membership, release
    ("POST members", 7),  # token, room check, the user, get_or_create (select, savepoint, ...)
    ("DELETE members", 6),  # token, room check, the user, savepoint, delete, release
    ("GET messages", 3),  # token, room check, the page with its senders
    ("GET messages after", 3),
    ("GET messages before", 3),
    ("POST messages", 5),  # token, room check, savepoint, the one store statement, release
    ("POST messages joining", 6),  # and the membership posting in a public room makes
    ("POST read", 7),  # token, room check, savepoint, last_seq, membership, update, release
    ("GET presence", 2),  # token, room check (who is online is in memory or Redis)
    ("GET /api/webhooks", 2),
    ("POST /api/webhooks", 6),  # token, savepoint, user lock, count, insert, release
    ("DELETE webhook", 4),  # token, the webhook, its deliveries, itself
    ("GET /api/notifications", 2),
    ("POST /api/notifications/read", 5),  # token, savepoint, inbox made, locked, release
    ("POST /api/notify", 6),  # service key, savepoint, users, inboxes, the store, release
    ("GET /healthz", 0),
    ("GET /readyz", 0),  # PostgreSQL is checked on a connection of its own (realtime/health.py)
    ("GET /metrics", 0),
    ("GET /accounts/signup/", 0),
    ("GET / (session)", 2),  # the session, its user
    ("POST /accounts/logout/", 4),  # the session, its user, the session again, its delete
]


@pytest.fixture
def requests(
    settings: Any,
    client: Client,
    den: Room,
    alice: Any,
    bob: Any,
    charlie: Any,
    general: Room,
    service_key: str,
) -> dict[str, Callable[[], Any]]:
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the webhook's URL is loopback
    a, b = bearer("alice"), bearer("bob")
    service: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {service_key}"}
    hook, _ = webhook_actions.do_create_webhook(alice, "http://127.0.0.1:9/h", [])
    signed_in = Client()
    signed_in.force_login(bob)
    message = {"body": "hi", "client_msg_id": "p1"}
    return {
        "GET /api/me": lambda: client.get("/api/me", **b),
        "GET /api/rooms": lambda: client.get("/api/rooms", **b),
        "POST /api/rooms": lambda: post(client, "/api/rooms", {"slug": "new"}, **b),
        "POST members": lambda: post(
            client, "/api/rooms/den/members", {"username": "charlie"}, **a
        ),
        "DELETE members": lambda: client.delete("/api/rooms/den/members/bob", **a),
        "GET messages": lambda: client.get("/api/rooms/den/messages", **b),
        "GET messages after": lambda: client.get("/api/rooms/den/messages?after=0", **b),
        "GET messages before": lambda: client.get("/api/rooms/den/messages?before=9", **b),
        "POST messages": lambda: post(client, "/api/rooms/den/messages", message, **b),
        "POST messages joining": lambda: post(client, "/api/rooms/general/messages", message, **b),
        "POST read": lambda: post(client, "/api/rooms/den/read", {"seq": 1}, **b),
        "GET presence": lambda: client.get("/api/rooms/den/presence", **b),
        "GET /api/webhooks": lambda: client.get("/api/webhooks", **a),
        "POST /api/webhooks": lambda: post(
            client, "/api/webhooks", {"url": "http://127.0.0.1:9/x"}, **a
        ),
        "DELETE webhook": lambda: client.delete(f"/api/webhooks/{hook.pk}", **a),
        "GET /api/notifications": lambda: client.get("/api/notifications", **b),
        "POST /api/notifications/read": lambda: post(
            client, "/api/notifications/read", {"up_to": 1}, **b
        ),
        "POST /api/notify": lambda: post(
            client, "/api/notify", {"users": ["bob"], "kind": "k"}, **service
        ),
        "GET /healthz": lambda: client.get("/healthz"),
        "GET /readyz": lambda: client.get("/readyz"),
        "GET /metrics": lambda: client.get("/metrics"),
        "GET /accounts/signup/": lambda: client.get("/accounts/signup/"),
        "GET / (session)": lambda: signed_in.get("/"),
        "POST /accounts/logout/": lambda: signed_in.post("/accounts/logout/"),
    }


@pytest.mark.parametrize(("name", "expected"), VIEWS, ids=[name for name, _ in VIEWS])
def test_each_view_takes_its_pinned_queries(
    requests: dict[str, Callable[[], Any]], name: str, expected: int
) -> None:
    responses: list[Any] = []
    pinned(lambda: responses.append(requests[name]()), expected)
    assert responses[0].status_code < 400, responses[0].content


def test_it_pins_every_route(requests: dict[str, Callable[[], Any]]) -> None:
    """A new route in project/urls.py needs its row in VIEWS (the admin and Django's login
    form are Django's own)."""
    from project.urls import urlpatterns

    routes = {str(getattr(p, "pattern", "")) for p in urlpatterns} - {"admin/", "accounts/login/"}
    covered = {requests[name]().resolver_match.route for name, _ in VIEWS}
    assert routes == covered
    assert set(requests) == {name for name, _ in VIEWS}


# --- Lists and history pages: as many queries for 50 rows as for 1 --------------------------


def test_the_room_list_takes_as_many_queries_for_50_rooms_as_for_1(
    client: Client, alice: Any, bob: Any
) -> None:
    as_bob = bearer("bob")

    def listed() -> int:
        return queries(lambda: client.get("/api/rooms", **as_bob))

    Room.objects.all().delete()
    actions.do_create_room(alice, "r0", "r0", private=True)
    actions.do_add_member(alice, Room.objects.get(slug="r0"), "bob")
    one = listed()
    for i in range(1, 50):
        room = actions.do_create_room(alice, f"r{i}", f"r{i}", private=i % 2 == 0)
        if room.private:
            actions.do_add_member(alice, room, "bob")
        actions.do_send_message(alice, room, "m", "c")
    assert len(client.get("/api/rooms", **as_bob).json()["rooms"]) == 50
    assert listed() == one == 2


@pytest.mark.parametrize("query", ["", "?after=0", "?before=100"])
def test_a_history_page_takes_as_many_queries_for_50_senders_as_for_1(
    client: Client, general: Room, bob: Any, query: str
) -> None:
    as_bob = bearer("bob")
    path = f"/api/rooms/general/messages{query}"
    senders = users("s", 50)
    actions.do_send_messages([actions.Outgoing(senders[0], general, "m", "c")])
    one = queries(lambda: client.get(path, **as_bob))
    actions.do_send_messages([actions.Outgoing(s, general, "m", "c") for s in senders[1:]])
    page = client.get(path, **as_bob).json()["messages"]
    assert len({m["sender"] for m in page}) == 50
    assert queries(lambda: client.get(path, **as_bob)) == one == 3


def test_the_notifications_page_takes_as_many_queries_for_50_as_for_1(
    client: Client, bob: Any, service_key: str
) -> None:
    as_bob = bearer("bob")
    service = ServiceKey.objects.get()
    notify = notify_actions.check_notify({"users": ["bob"], "kind": "k"})
    notify_actions.do_notify(service, notify)
    one = queries(lambda: client.get("/api/notifications", **as_bob))
    for _ in range(49):
        notify_actions.do_notify(service, notify)
    assert len(client.get("/api/notifications", **as_bob).json()["notifications"]) == 50
    assert queries(lambda: client.get("/api/notifications", **as_bob)) == one == 2


def test_the_webhook_list_takes_as_many_queries_for_10_as_for_1(
    settings: Any, client: Client, alice: Any
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    as_alice = bearer("alice")
    webhook_actions.do_create_webhook(alice, "http://127.0.0.1:9/0", ["mention"])
    one = queries(lambda: client.get("/api/webhooks", **as_alice))
    for i in range(1, settings.WEBHOOK_MAX_PER_USER):
        webhook_actions.do_create_webhook(alice, f"http://127.0.0.1:9/{i}", ["mention"])
    assert len(client.get("/api/webhooks", **as_alice).json()["webhooks"]) == 10
    assert queries(lambda: client.get("/api/webhooks", **as_alice)) == one == 2


# --- Actions, called directly (a test's transaction: atomic blocks are savepoints) ----------

ACTIONS = [
    ("do_create_room", 4),  # savepoint, room, owner's membership, release
    ("do_add_member", 5),  # the user, get_or_create: select, savepoint, insert, release
    ("do_remove_member", 4),
    ("do_send_message", 3),  # savepoint, the one store statement, release
    ("do_send_message joining", 4),  # and the membership
    ("do_send_message mentioning", 9),  # and the mentions: users, members, inboxes, store
    ("do_mark_read", 5),  # savepoint, last_seq, membership, update, release
    ("do_read", 8),  # joining on the way: get_or_create's savepoint and insert
    ("do_issue_token", 2),
    ("do_revoke_tokens", 4),
    ("do_end_session", 0),
    ("do_deactivate_user", 3),
    ("do_check_user_sockets", 0),
    ("do_end_user_sockets", 0),
    ("do_add_totp_device", 2),
    ("do_typing", 0),
    ("do_notify users", 5),
    ("do_notify room", 6),
    ("do_notify replayed", 1),
    ("do_mark_notifications_read", 6),
    ("do_issue_service_key", 1),
    ("do_revoke_service_keys", 1),
    ("do_presence_changes", 0),
    ("do_create_webhook", 5),
    ("do_delete_webhook", 3),
    ("do_provision_load", 7),  # bulk: any number of users and rooms
]


@pytest.fixture
def calls(
    settings: Any, den: Room, alice: Any, bob: Any, charlie: Any, general: Room, service_key: str
) -> dict[str, Callable[[], Any]]:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    service = ServiceKey.objects.get()
    by_users = notify_actions.check_notify({"users": ["bob", "charlie"], "kind": "k"})
    by_room = notify_actions.check_notify({"room": "den", "kind": "k"})
    once = notify_actions.check_notify({"users": ["bob"], "kind": "k", "idempotency_key": "a"})
    notify_actions.do_notify(service, once)
    hook, _ = webhook_actions.do_create_webhook(alice, "http://127.0.0.1:9/h", [])
    actions.do_issue_token("bob")
    change = presence_actions.PresenceChange(den.pk, den.slug, ["bob"], [])
    return {
        "do_create_room": lambda: actions.do_create_room(alice, "new", "New", private=False),
        "do_add_member": lambda: actions.do_add_member(alice, den, "charlie"),
        "do_remove_member": lambda: actions.do_remove_member(alice, den, "bob"),
        "do_send_message": lambda: actions.do_send_messages(
            [actions.Outgoing(bob, den, "hi", "s1", member=True)]
        ),
        "do_send_message joining": lambda: actions.do_send_message(bob, general, "hi", "s2"),
        "do_send_message mentioning": lambda: actions.do_send_message(alice, den, "hi @bob", "s3"),
        "do_mark_read": lambda: actions.do_mark_read(bob, den, 1),
        "do_read": lambda: actions.do_read(charlie, general, 0),
        "do_issue_token": lambda: actions.do_issue_token("charlie"),
        "do_revoke_tokens": lambda: actions.do_revoke_tokens(ApiToken.objects.all()),
        "do_end_session": lambda: actions.do_end_session(bob, "key"),
        "do_deactivate_user": lambda: actions.do_deactivate_user(charlie),
        "do_check_user_sockets": lambda: actions.do_check_user_sockets(bob),
        "do_end_user_sockets": lambda: actions.do_end_user_sockets(bob.pk),
        "do_add_totp_device": lambda: actions.do_add_totp_device("bob", "phone"),
        "do_typing": lambda: actions.do_typing(bob, den),
        "do_notify users": lambda: notify_actions.do_notify(service, by_users),
        "do_notify room": lambda: notify_actions.do_notify(service, by_room),
        "do_notify replayed": lambda: notify_actions.do_notify(service, once),
        "do_mark_notifications_read": lambda: notify_actions.do_mark_notifications_read(bob, 1),
        "do_issue_service_key": lambda: notify_actions.do_issue_service_key("other"),
        "do_revoke_service_keys": lambda: notify_actions.do_revoke_service_keys(
            ServiceKey.objects.all()
        ),
        "do_presence_changes": lambda: presence_actions.do_presence_changes([change]),
        "do_create_webhook": lambda: webhook_actions.do_create_webhook(
            alice, "http://127.0.0.1:9/x", ["mention"]
        ),
        "do_delete_webhook": lambda: webhook_actions.do_delete_webhook(alice, hook.pk),
        "do_provision_load": lambda: actions.do_provision_load("load", users=5, rooms=2),
    }


@pytest.mark.parametrize(("name", "expected"), ACTIONS, ids=[name for name, _ in ACTIONS])
def test_each_action_takes_its_pinned_queries(
    calls: dict[str, Callable[[], Any]], name: str, expected: int
) -> None:
    pinned(calls[name], expected)


def test_it_pins_every_action(calls: dict[str, Callable[[], Any]]) -> None:
    """A new do_* needs its row in ACTIONS."""
    modules = [actions, notify_actions, presence_actions, webhook_actions]
    defined = {name for m in modules for name in vars(m) if name.startswith("do_")}
    # Pinned in the tests named in this module's docstring.
    defined -= {"do_send_messages", "do_notify_mentions"}
    assert {name.split()[0] for name in calls} == defined


def test_batched_actions_take_as_many_queries_for_50_as_for_1(
    general: Room, alice: Any, service_key: str
) -> None:
    service = ServiceKey.objects.get()
    many = users("u", 50)
    room = actions.do_create_room(alice, "team", "Team", private=True)
    for user in many:
        actions.do_add_member(alice, room, user.username)

    def publish(senders: list[Any], tag: str) -> int:
        # Not members of general yet: each joins it by posting.
        return queries(
            lambda: actions.do_send_messages(
                [actions.Outgoing(s, general, "m", f"{tag}{s.pk}") for s in senders]
            )
        )

    assert publish(many[:1], "a") == publish(many[1:], "b")

    def revoke(names: list[str]) -> int:
        for name in names:
            actions.do_issue_token(name)
        return queries(lambda: actions.do_revoke_tokens(ApiToken.objects.all()))

    assert revoke(["u0"]) == revoke([u.username for u in many])

    def notify(data: dict[str, Any]) -> int:
        request = notify_actions.check_notify({"kind": "k", **data})
        return queries(lambda: notify_actions.do_notify(service, request))

    assert notify({"users": ["u0"]}) == notify({"users": [u.username for u in many]})
    assert notify({"room": "team"}) == notify({"room": "general"})  # 51 members, then 50

    def read_up(user: Any, count: int) -> int:
        for _ in range(count):
            notify({"users": [user.username]})
        return queries(lambda: notify_actions.do_mark_notifications_read(user, 10**6))

    assert read_up(many[1], 1) == read_up(many[2], 50)
