"""Per-user notifications: storing, mentions, the HTTP API and the live socket stream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from realtime import events
from tests.conftest import CaptureEvents
from tests.test_consumers import Socket, open_socket
from web import actions
from web.actions import notifications
from web.models import Inbox, Message, Notification, Room


def bearer(username: str) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {actions.do_issue_token(username)}"}


def notify(user_ids: list[Any], kind: str = "ping", payload: dict[str, Any] | None = None) -> None:
    """Store one notification for each user, the way the actions do (a transaction)."""
    from django.db import transaction

    with transaction.atomic():
        notifications._store([(u, kind, 0) for u in user_ids], [payload or {"n": 1}])


def say(user: Any, room: Room, body: str, client_msg_id: str) -> None:
    actions.do_send_message(user, room, body, client_msg_id)


@pytest.fixture
def den(alice: Any, bob: Any) -> Room:
    """Alice's private room, with Bob as a member."""
    room = actions.do_create_room(alice, "den", "Alice's den", private=True)
    actions.do_add_member(alice, room, "bob")
    return room


# --- Storing --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_user_gets_gap_free_seqs_in_order(alice: Any, bob: Any) -> None:
    stored = Notification.objects.store(
        [(alice.pk, "a", 0), (bob.pk, "b", 1), (alice.pk, "c", 1)], [{"x": 0}, {"x": 1}]
    )
    assert [(n.user_id, n.seq, n.kind, n.payload) for n in stored] == [
        (alice.pk, 1, "a", {"x": 0}),
        (bob.pk, 1, "b", {"x": 1}),
        (alice.pk, 2, "c", {"x": 1}),
    ]
    notify([alice.pk])
    assert list(
        Notification.objects.filter(user=alice).order_by("seq").values_list("seq", "kind")
    ) == [(1, "a"), (2, "c"), (3, "ping")]
    assert Inbox.objects.get(user=alice).last_seq == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_bulk_notifies_keep_seqs_gap_free_without_deadlocks(
    alice: Any, bob: Any, charlie: Any
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    orders = [[alice.pk, bob.pk, charlie.pk], [charlie.pk, bob.pk, alice.pk]]

    def run(users: list[Any]) -> None:
        try:
            for _ in range(40):
                notify(users)
        finally:
            connections.close_all()

    # Opposite orders at once: locks taken in the given order would deadlock.
    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(run, orders[i % 2]) for i in range(6)]:
            future.result()
    for user in (alice, bob, charlie):
        seqs = list(
            Notification.objects.filter(user=user).order_by("seq").values_list("seq", flat=True)
        )
        assert seqs == list(range(1, 241))
        assert Inbox.objects.get(user=user).last_seq == 240


# --- Mentions -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_mention_notifies_the_user_once(general: Room, alice: Any, bob: Any) -> None:
    say(alice, general, "hi @bob, and again @bob.", "m1")
    (mention,) = Notification.objects.filter(user=bob)
    assert (mention.seq, mention.kind) == (1, "mention")
    assert mention.payload == {
        "room": "general",
        "seq": 1,
        "sender": "alice",
        "excerpt": "hi @bob, and again @bob.",
    }


@pytest.mark.django_db
def test_mentions_skip_the_sender_strangers_and_non_members(
    general: Room, den: Room, alice: Any, bob: Any, charlie: Any
) -> None:
    say(alice, general, "me @alice and @nobody and an email bob@example.com", "m1")
    say(alice, den, "@charlie cannot read this, @bob can", "m2")
    assert list(Notification.objects.values_list("user__username", "payload__room")) == [
        ("bob", "den")
    ]


@pytest.mark.django_db
def test_a_retried_message_mentions_nobody_again(general: Room, alice: Any, bob: Any) -> None:
    say(alice, general, "@bob", "m1")
    say(alice, general, "@bob", "m1")
    assert Notification.objects.filter(user=bob).count() == 1


@pytest.mark.django_db
def test_mention_queries_do_not_grow_with_mentions_or_messages(
    general: Room, alice: Any, bob: Any, charlie: Any
) -> None:
    def queries(bodies: list[str], prefix: str) -> int:
        batch = [actions.Outgoing(alice, general, b, f"{prefix}{i}") for i, b in enumerate(bodies)]
        with CaptureQueriesContext(connection) as captured:
            actions.do_send_messages(batch)
        return len(captured)

    one = queries(["hi @bob"], "a")
    many = queries(["@bob @charlie", "@charlie", "@bob and @charlie", "@bob"], "b")
    assert one == many
    assert Notification.objects.count() == 1 + 6


@pytest.mark.django_db(transaction=True)
def test_a_mention_is_stored_in_the_messages_transaction(
    general: Room, alice: Any, bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("the mention insert failed")

    monkeypatch.setattr(Notification.objects, "store", broken)
    with pytest.raises(RuntimeError):
        say(alice, general, "hi @bob", "m1")
    # Neither is stored: the message went with the failed mention.
    assert not Message.objects.exists()
    assert Room.objects.get(pk=general.pk).last_seq == 0


def test_notification_events(alice: Any, bob: Any, capture_events: CaptureEvents) -> None:
    with capture_events(2) as captured:
        notify([bob.pk, alice.pk], payload={"k": "v"})
    groups = {group for group, _ in captured}
    assert groups == {f"user.{alice.pk}", f"user.{bob.pk}"}
    for _, event in captured:
        assert set(event) == {"type", "seq", "text"}
        assert (event["type"], event["seq"]) == ("notification.created", 1)
        frame = orjson.loads(event["text"])
        assert set(frame) == {"type", "seq", "kind", "payload", "ts"}
        assert (frame["type"], frame["kind"], frame["payload"]) == (
            "notification",
            "ping",
            {"k": "v"},
        )
    with capture_events(1) as captured:
        notifications.do_mark_notifications_read(bob, 1)
    ((group, event),) = captured
    assert group == f"user.{bob.pk}"
    assert event["seq"] == events.EPHEMERAL
    assert orjson.loads(event["text"]) == {"type": "notifications_read", "up_to": 1, "unread": 0}


# --- HTTP -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_pages_notifications(client: Client, alice: Any) -> None:
    for _ in range(5):
        notify([alice.pk])
    auth = bearer("alice")

    def page(query: str) -> tuple[list[int], bool]:
        answer = client.get(f"/api/notifications?{query}", **auth).json()
        return [n["seq"] for n in answer["notifications"]], answer["has_more"]

    assert page("") == ([1, 2, 3, 4, 5], False)
    assert page("after=1&limit=2") == ([2, 3], True)
    assert page("after=3&limit=2") == ([4, 5], False)
    for query in ("limit=201", "limit=0", "after=-1", "after=x"):
        assert client.get(f"/api/notifications?{query}", **auth).status_code == 400


@pytest.mark.django_db
def test_marking_read_moves_forward_only(client: Client, alice: Any) -> None:
    for _ in range(3):
        notify([alice.pk])
    auth = bearer("alice")

    def read(up_to: Any) -> Any:
        return client.post(
            "/api/notifications/read", {"up_to": up_to}, content_type="application/json", **auth
        )

    assert client.get("/api/me", **auth).json()["notifications_unread"] == 3
    assert read(2).json() == {"up_to": 2, "unread": 1}
    assert read(1).json() == {"up_to": 2, "unread": 1}  # never back
    assert read(99).json() == {"up_to": 3, "unread": 0}  # no further than the newest
    assert client.get("/api/me", **auth).json()["notifications_unread"] == 0
    assert not Notification.objects.filter(read_at__isnull=True).exists()
    for bad in (-1, "2", True, None):
        assert read(bad).status_code == 400


@pytest.mark.django_db
def test_a_user_reads_only_their_own_notifications(client: Client, alice: Any, bob: Any) -> None:
    notify([alice.pk])
    answer = client.get("/api/notifications", **bearer("bob")).json()
    assert answer == {"notifications": [], "has_more": False}


# --- Sockets --------------------------------------------------------------------------------


async def open_ready(username: str) -> Socket:
    """A socket whose connect has finished: its notification stream is live.

    The handshake is answered before connect() goes on to follow notifications, and frames
    are handled one at a time after it: a pong means connect is done."""
    ws = await open_socket(username)
    await ws.send({"type": "ping", "ref": "ready"})
    assert await ws.recv() == {"type": "pong", "ref": "ready"}
    return ws


async def recv_type(ws: Socket, kind: str) -> dict[str, Any]:
    frame = await ws.recv()
    assert frame["type"] == kind, frame
    return frame


@pytest.mark.django_db(transaction=True)
async def test_every_socket_gets_its_notifications_live(alice: Any, bob: Any) -> None:
    ws = await open_ready("bob")
    try:
        await sync_to_async(notify)([bob.pk], "ping", {"n": 1})
        frame = await recv_type(ws, "notification")
        assert (frame["seq"], frame["kind"], frame["payload"]) == (1, "ping", {"n": 1})
        await sync_to_async(notify)([alice.pk])  # not Bob's
        assert await ws.nothing()
    finally:
        await ws.comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_subscribe_notifications_recovers_missed_ones_once_in_order(bob: Any) -> None:
    for _ in range(3):
        await sync_to_async(notify)([bob.pk])
    ws = await open_ready("bob")
    try:
        assert await ws.nothing()  # live from the connect: nothing old
        await ws.send({"type": "subscribe_notifications", "ref": "n", "since": 1})
        assert [(await recv_type(ws, "notification"))["seq"] for _ in range(2)] == [2, 3]
        assert await recv_type(ws, "notifications_subscribed") == {
            "type": "notifications_subscribed",
            "ref": "n",
            "last_seq": 3,
        }
        await sync_to_async(notify)([bob.pk])
        assert (await recv_type(ws, "notification"))["seq"] == 4
        assert await ws.nothing()
    finally:
        await ws.comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_lost_notification_broadcasts_are_filled_from_the_database(
    bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = await open_ready("bob")
    try:
        real = events._publish
        monkeypatch.setattr(events, "_publish", lambda *items: None)
        await sync_to_async(notify)([bob.pk])  # its broadcast is lost
        monkeypatch.setattr(events, "_publish", real)
        await sync_to_async(notify)([bob.pk])  # seq 2 shows the hole: 1 comes from the db
        assert [(await recv_type(ws, "notification"))["seq"] for _ in range(2)] == [1, 2]
    finally:
        await ws.comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_marking_read_reaches_the_users_other_sockets(client: Client, bob: Any) -> None:
    await sync_to_async(notify)([bob.pk])
    await sync_to_async(notify)([bob.pk])
    ws = await open_ready("bob")
    try:
        auth = await sync_to_async(bearer)("bob")
        response = await sync_to_async(client.post)(
            "/api/notifications/read", {"up_to": 1}, content_type="application/json", **auth
        )
        assert response.status_code == 200
        assert await recv_type(ws, "notifications_read") == {
            "type": "notifications_read",
            "up_to": 1,
            "unread": 1,
        }
    finally:
        await ws.comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_mention_reaches_the_mentioned_users_socket(
    general: Room, alice: Any, bob: Any
) -> None:
    ws = await open_ready("bob")
    try:
        await sync_to_async(say)(alice, general, "look @bob", "m1")
        frame = await recv_type(ws, "notification")
        assert (frame["seq"], frame["kind"]) == (1, "mention")
        assert frame["payload"] == {
            "room": "general",
            "seq": 1,
            "sender": "alice",
            "excerpt": "look @bob",
        }
    finally:
        await ws.comm.disconnect()
