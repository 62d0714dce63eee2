"""Presence: who is online in a room, in one process (sockets) and over a real Redis.

Two `Presence` objects with their own process ids stand for two processes sharing Redis;
tests/e2e/test_presence_e2e.py runs real pods, one of them killed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import Client, override_settings

from realtime import cluster_limits, redis_clients
from realtime import presence as presence_module
from realtime.presence import Presence, get_presence
from realtime.presence_store import keys
from tests.test_consumers import Socket, open_socket
from web import actions, activity
from web.actions.presence import PresenceChange
from web.models import Room

pytestmark = pytest.mark.django_db(transaction=True)

FAST = override_settings(PRESENCE_FLUSH_SECONDS=0.05)


async def presence_socket(username: str) -> Socket:
    socket = await open_socket(username)
    socket.presence = True
    return socket


async def subscribe(socket: Socket, room: str = "general") -> dict[str, Any]:
    """Subscribe; the presence snapshot that follows `subscribed`."""
    await socket.send({"type": "subscribe", "ref": "s", "room": room})
    await socket.until("subscribed")
    return await socket.recv()


async def next_diff(socket: Socket) -> dict[str, Any]:
    frame = await socket.recv()
    assert frame["type"] == "presence", frame
    assert "online" not in frame, frame
    return frame


@FAST
async def test_a_subscriber_gets_who_is_online_then_who_joins_and_leaves(
    general: Room, alice: Any, bob: Any
) -> None:
    alice_ws = await presence_socket("alice")
    assert await subscribe(alice_ws) == {"type": "presence", "room": "general", "online": ["alice"]}
    bob_ws = await presence_socket("bob")
    snapshot = await subscribe(bob_ws)
    assert snapshot == {"type": "presence", "room": "general", "online": ["alice", "bob"]}
    # Her own join is in the same flush as Bob's, or the one before.
    diff = await next_diff(alice_ws)
    if diff["joined"] == ["alice"]:
        diff = await next_diff(alice_ws)
    assert "bob" in diff["joined"]
    assert diff["left"] == []
    await bob_ws.comm.disconnect()
    assert await next_diff(alice_ws) == {
        "type": "presence",
        "room": "general",
        "joined": [],
        "left": ["bob"],
    }
    await alice_ws.comm.disconnect()


@FAST
async def test_a_user_with_two_tabs_stays_online_until_the_last_closes(
    general: Room, alice: Any, bob: Any
) -> None:
    bob_ws = await presence_socket("bob")
    await subscribe(bob_ws)
    tabs = [await presence_socket("alice"), await presence_socket("alice")]
    for tab in tabs:
        await subscribe(tab)
    await get_presence().tick()
    while "alice" not in (await next_diff(bob_ws))["joined"]:
        pass
    await tabs[0].send({"type": "unsubscribe", "ref": "u", "room": "general"})
    while (await tabs[0].recv())["type"] != "unsubscribed":
        pass
    await tabs[0].comm.disconnect()
    await get_presence().tick()  # the first tab's close is written, and nobody left
    assert await bob_ws.nothing()
    assert await get_presence().online(general.pk) == ["alice", "bob"]
    await tabs[1].comm.disconnect()
    assert (await next_diff(bob_ws))["left"] == ["alice"]
    await bob_ws.comm.disconnect()


async def test_the_presence_endpoint_lists_who_is_online(
    general: Room, alice: Any, bob: Any, charlie: Any
) -> None:
    bob_ws = await presence_socket("bob")
    await subscribe(bob_ws)
    browser = Client()
    await sync_to_async(browser.force_login)(alice)
    response = await sync_to_async(browser.get)("/api/rooms/general/presence")
    assert response.status_code == 200
    assert response.json() == {"room": "general", "online": ["bob"]}
    den = await sync_to_async(actions.do_create_room)(alice, "den", "Den", True)
    await sync_to_async(browser.force_login)(charlie)
    response = await sync_to_async(browser.get)(f"/api/rooms/{den.slug}/presence")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    await bob_ws.comm.disconnect()


async def test_joins_in_one_window_go_out_as_one_frame_per_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[list[PresenceChange]] = []

    async def record(changes: list[PresenceChange]) -> None:
        sent.append(list(changes))

    monkeypatch.setattr(presence_module, "send_changes", record)
    tracker = Presence("p1", background=False)
    sockets = [object() for _ in range(200)]
    for i, socket in enumerate(sockets):
        await tracker.enter(socket, -7, "big", f"user{i:03}")
    # One who came and went within the window is reported by where they are now: gone.
    tracker.exit(sockets[0], -7, "user000")
    await tracker.tick()
    assert len(sent) == 1
    assert len(sent[0]) == 1
    change = sent[0][0]
    assert change.room_id == -7
    assert change.slug == "big"
    assert change.joined == [f"user{i:03}" for i in range(1, 200)]
    assert change.left == ["user000"]
    await tracker.tick()
    assert len(sent) == 1  # nothing changed: nothing sent


# Over a real Redis: two processes.


@pytest.fixture(params=["redis", "redis cluster"])
def redis_url(request: pytest.FixtureRequest, redis_proc: Any) -> Iterator[str]:
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    if request.param == "redis cluster":
        url = request.getfixturevalue("redis_cluster_url")
    with override_settings(REDIS_URL=url, PRESENCE_TTL_SECONDS=0.5):
        yield url


@pytest.fixture
async def server(redis_url: str) -> AsyncIterator[redis_clients.AsyncRedis]:
    client = redis_clients.async_client(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[PresenceChange]:
    changes: list[PresenceChange] = []

    async def record(batch: list[PresenceChange]) -> None:
        changes.extend(batch)

    monkeypatch.setattr(presence_module, "send_changes", record)
    return changes


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[Presence, Presence]]:
    made = (
        Presence(uuid.uuid4().hex[:8], background=False),
        Presence(uuid.uuid4().hex[:8], background=False),
    )
    yield made
    for tracker in made:
        if tracker.store is not None:
            await tracker.store.aclose()


def room_id() -> int:
    return int(uuid.uuid4().int % 1_000_000_000)


async def test_a_user_on_two_processes_leaves_when_the_last_lets_go(
    pair: tuple[Presence, Presence], sent: list[PresenceChange], server: aioredis.Redis
) -> None:
    one, two = pair
    room, tab_one, tab_two = room_id(), object(), object()
    assert await one.enter(tab_one, room, "r", "alice") == ["alice"]
    assert await two.enter(tab_two, room, "r", "alice") == ["alice"]
    await one.tick(beat=False)
    sent.clear()
    one.exit(tab_one, room, "alice")
    await one.tick(beat=False)
    assert one.touched == {}
    assert sent == []
    assert await one.online(room) == ["alice"]
    two.exit(tab_two, room, "alice")
    await two.tick(beat=False)
    assert [change for change in sent if change.room_id == room] == [
        PresenceChange(room, "r", [], ["alice"])
    ]
    assert await one.online(room) == []
    assert await server.hgetall(keys(room)[1]) == {}


async def test_a_dead_processs_users_leave_once_when_their_heartbeat_expires(
    pair: tuple[Presence, Presence], sent: list[PresenceChange]
) -> None:
    alive, dead = pair
    third = Presence(uuid.uuid4().hex[:8], background=False)
    room = room_id()
    with override_settings(PRESENCE_TTL_SECONDS=5):
        await alive.enter(object(), room, "r", "bob")
        await third.enter(object(), room, "r", "bob")
    await dead.enter(object(), room, "r", "alice")
    await asyncio.gather(alive.tick(beat=False), third.tick(beat=False))
    sent.clear()
    # The dead one never beats again. Its member expires with time, which no event marks.
    await asyncio.sleep(settings.PRESENCE_TTL_SECONDS + 0.1)
    # The two live processes' heartbeats sweep at once: Alice's leave is reported once.
    with override_settings(PRESENCE_TTL_SECONDS=5):
        await asyncio.gather(alive.tick(beat=True), third.tick(beat=True))
    assert [change for change in sent if change.room_id == room] == [
        PresenceChange(room, "r", [], ["alice"])
    ]
    assert await alive.online(room) == ["bob"]
    assert third.store is not None
    await third.store.aclose()


async def test_heartbeats_put_back_what_redis_lost(
    pair: tuple[Presence, Presence], sent: list[PresenceChange], server: aioredis.Redis
) -> None:
    one, _ = pair
    room = room_id()
    await one.enter(object(), room, "r", "alice")
    await one.tick(beat=False)
    sent.clear()
    await server.delete(*keys(room))  # a Redis restarted empty
    assert await one.online(room) == []
    await one.tick(beat=True)
    assert await one.online(room) == ["alice"]
    assert [change for change in sent if change.room_id == room] == [
        PresenceChange(room, "r", ["alice"], [])
    ]


async def test_subscribing_works_while_redis_does_not_answer(
    general: Room, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cluster.procs import free_port

    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        tracker = get_presence()
        store, tracker.store = tracker.store, None
        try:
            socket = await presence_socket("alice")
            assert await subscribe(socket) == {
                "type": "presence",
                "room": "general",
                "online": ["alice"],
            }
            await socket.send({"type": "ping", "ref": "p"})
            assert await socket.recv() == {"type": "pong", "ref": "p"}
            await socket.comm.disconnect()
        finally:
            tracker.store = store
            cluster_limits.reset_cluster_limits()


async def test_last_seen_is_now_while_a_socket_is_open_then_when_it_closed(
    pair: tuple[Presence, Presence], alice: Any, bob: Any
) -> None:
    one, _ = pair
    one.connected(alice.pk)
    await one.tick(beat=False)
    seen = await sync_to_async(activity.last_seen)([alice.pk, bob.pk])
    assert seen[bob.pk] is None
    now = seen[alice.pk]
    assert now is not None
    assert abs(now - time.time()) < 2
    one.disconnected(alice.pk)
    await one.tick(beat=False)
    closed = (await sync_to_async(activity.last_seen)([alice.pk]))[alice.pk]
    await asyncio.sleep(0.2)
    assert (await sync_to_async(activity.last_seen)([alice.pk]))[alice.pk] == closed


async def test_last_seen_without_redis_reads_this_process(alice: Any, bob: Any) -> None:
    socket = await open_socket("alice")
    await get_presence().tick(beat=False)
    seen = activity.last_seen([alice.pk, bob.pk])
    assert seen[bob.pk] is None
    now = seen[alice.pk]
    assert now is not None
    assert abs(now - time.time()) < 2
    await socket.comm.disconnect()
    await get_presence().tick(beat=False)
    closed = activity.last_seen([alice.pk])[alice.pk]
    await asyncio.sleep(0.05)
    assert activity.last_seen([alice.pk])[alice.pk] == closed


def test_a_killed_process_users_leave_within_30_seconds_by_default() -> None:
    # Dead at worst just after a heartbeat: its members expire a TTL later, the next
    # heartbeat's sweep of a live process sees it, and the next flush sends it.
    worst = (
        settings.PRESENCE_TTL_SECONDS
        + settings.PRESENCE_HEARTBEAT_SECONDS
        + settings.PRESENCE_FLUSH_SECONDS
    )
    assert worst <= 30
    # Heartbeats several times per TTL: a slow Redis call does not make a live user leave.
    assert settings.PRESENCE_TTL_SECONDS >= 3 * settings.PRESENCE_HEARTBEAT_SECONDS
