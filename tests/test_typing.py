"""Typing notices: relayed to the room's subscribers, at most once per interval per user and
room (the rest dropped without an error), never stored."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from realtime import cluster_limits, limits
from realtime.process import get_process
from tests.test_consumers import Socket, open_socket
from web import actions
from web.models import Message, Room

pytestmark = pytest.mark.django_db(transaction=True)

TYPING = {"type": "typing", "room": "general"}


async def subscribed(username: str, room: str = "general") -> Socket:
    socket = await open_socket(username)
    await socket.send({"type": "subscribe", "ref": "s", "room": room})
    await socket.until("subscribed")
    return socket


async def typing_frames(socket: Socket) -> list[dict[str, Any]]:
    """The typing frames that reach the socket before it goes quiet."""
    frames = []
    while not await socket.nothing():
        frame = await socket.recv()
        assert frame["type"] == "typing", frame  # never an error
        frames.append(frame)
    return frames


@override_settings(TYPING_INTERVAL_SECONDS=0.5)
async def test_typing_is_relayed_once_per_interval_and_extra_notices_are_dropped(
    general: Room, alice: Any, bob: Any
) -> None:
    alice_ws, bob_ws = await subscribed("alice"), await subscribed("bob")
    # Three, then one more: within the connection's burst (TYPING_BURST, 5), so what drops
    # the extra two is the interval per user and room.
    for _ in range(3):
        await alice_ws.send(TYPING)
    assert await typing_frames(bob_ws) == [{"type": "typing", "room": "general", "user": "alice"}]
    # The sender's sockets get the one relayed frame too (clients skip their own name); the
    # dropped ones answer nothing, not an error.
    assert await typing_frames(alice_ws) == [{"type": "typing", "room": "general", "user": "alice"}]
    await asyncio.sleep(0.5)  # the interval is time passing: no event marks it
    await alice_ws.send(TYPING)
    assert len(await typing_frames(bob_ws)) == 1
    assert not await Message.objects.filter(room=general).aexists()
    for socket in (alice_ws, bob_ws):
        await socket.comm.disconnect()


async def test_the_interval_is_per_room_and_per_user(
    general: Room, alice: Any, bob: Any, charlie: Any
) -> None:
    den = await sync_to_async(actions.do_create_room)(alice, "den", "Den", False)
    bob_ws = await subscribed("bob")
    bob_den = await subscribed("bob", "den")
    alice_ws, charlie_ws = await open_socket("alice"), await open_socket("charlie")
    await alice_ws.send(TYPING)
    await alice_ws.send({"type": "typing", "room": den.slug})
    await charlie_ws.send(TYPING)
    users = sorted(f["user"] for f in await typing_frames(bob_ws))
    assert users == ["alice", "charlie"]
    assert [f["user"] for f in await typing_frames(bob_den)] == ["alice"]
    for socket in (alice_ws, bob_ws, bob_den, charlie_ws):
        await socket.comm.disconnect()


async def test_a_client_typing_without_pause_is_not_cut_off(general: Room, alice: Any) -> None:
    alice_ws = await open_socket("alice")
    for _ in range(60):  # past the strikes that close a flooding publisher
        await alice_ws.send(TYPING)
    await alice_ws.send({"type": "ping", "ref": "p"})
    assert await alice_ws.recv() == {"type": "pong", "ref": "p"}
    await alice_ws.comm.disconnect()


@pytest.fixture(params=["redis", "redis cluster"])
def redis_url(request: pytest.FixtureRequest, redis_proc: Any) -> Iterator[str]:
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    if request.param == "redis cluster":
        url = request.getfixturevalue("redis_cluster_url")
    with override_settings(REDIS_URL=url):
        cluster_limits.reset_cluster_limits()
        yield url
    cluster_limits.reset_cluster_limits()


async def test_the_interval_holds_across_processes_with_redis(redis_url: str) -> None:
    user_id, room_id = f"typist-{id(redis_url)}", 41
    assert await limits.allow_typing_notice(user_id, room_id)
    assert not await limits.allow_typing_notice(user_id, room_id)  # this process knows
    get_process().typing_sent.clear()  # another process, which has not seen it
    assert not await limits.allow_typing_notice(user_id, room_id)  # Redis knows
    assert await limits.allow_typing_notice(user_id, room_id + 1)
