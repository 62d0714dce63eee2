"""Presence, typing and read state end to end: uvicorn pods over real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.e2e.http_client import Http
from tests.e2e.servers import Pod, SpawnPod, Stack
from tests.e2e.wsclient import Frame, Sockets, WsClient

pytestmark = pytest.mark.e2e

# The pod that is killed beats often and expires soon, to keep the test short; the default
# bound (30 s) is arithmetic on the settings (tests/test_presence.py).
SHORT_TTL = {"PRESENCE_TTL_SECONDS": "2", "PRESENCE_HEARTBEAT_SECONDS": "0.5"}
DEFAULT_HEARTBEAT, FLUSH = 5.0, 0.5  # the surviving pod's, which sweeps


def joined(user: str) -> Callable[[Frame], bool]:
    return lambda f: "joined" in f and user in f["joined"]


def left(user: str) -> Callable[[Frame], bool]:
    return lambda f: "left" in f and user in f["left"]


async def snapshot(client: WsClient, room: str) -> list[str]:
    """Subscribe; the `online` list that follows."""
    await client.subscribe(room)
    frame = await client.wait_for_presence(lambda f: "online" in f and f["room"] == room)
    online: list[str] = frame["online"]
    return online


async def test_presence_spans_pods_and_a_killed_pods_users_leave_within_its_ttl(
    sockets: Sockets, pod_a: Pod, spawn_pod: SpawnPod, alice_api: Http, room: str
) -> None:
    doomed = await asyncio.to_thread(spawn_pod, "presence-doomed", SHORT_TTL)
    alice = await sockets.open(pod_a, "alice")
    assert await snapshot(alice, room) == ["alice"]
    bob = await sockets.open(doomed, "bob")
    assert await snapshot(bob, room) == ["alice", "bob"]
    await alice.wait_for_presence(joined("bob"))
    answer = await alice_api.get(f"/api/rooms/{room}/presence")
    assert answer.json() == {"room": room, "online": ["alice", "bob"]}
    await asyncio.to_thread(doomed.kill)
    killed = time.monotonic()
    bound = 2 + DEFAULT_HEARTBEAT + FLUSH + 1  # TTL, the survivor's sweep, a flush, slack
    frame = await alice.wait_for_presence(left("bob"), within=bound + 2)
    assert time.monotonic() - killed <= bound
    assert frame == {"type": "presence", "room": room, "joined": [], "left": ["bob"]}
    answer = await alice_api.get(f"/api/rooms/{room}/presence")
    assert answer.json()["online"] == ["alice"]


async def test_a_user_with_tabs_on_two_pods_is_online_until_the_last_closes(
    sockets: Sockets, pod_a: Pod, pod_b: Pod, alice_api: Http, room: str
) -> None:
    bob = await sockets.open(pod_a, "bob")
    await snapshot(bob, room)
    tabs = [await sockets.open(pod_a, "alice"), await sockets.open(pod_b, "alice")]
    for tab in tabs:
        await snapshot(tab, room)
    await bob.wait_for_presence(joined("alice"))
    await tabs[0].close()
    # A marker: Charlie joins through the same pod after the tab closed. Its diff comes
    # after any leave that pod would have sent for Alice.
    charlie = await sockets.open(pod_a, "charlie")
    await snapshot(charlie, room)
    await bob.wait_for_presence(joined("charlie"))
    assert not [f for f in bob.presence if "left" in f and "alice" in f["left"]], bob.presence
    answer = await alice_api.get(f"/api/rooms/{room}/presence")
    assert answer.json()["online"] == ["alice", "bob", "charlie"]
    await tabs[1].close()
    await bob.wait_for_presence(left("alice"))


async def test_typing_is_relayed_once_per_interval_across_pods(
    sockets: Sockets, pod_a: Pod, pod_b: Pod, room: str
) -> None:
    bob = await sockets.open(pod_a, "bob")
    await bob.subscribe(room)
    tab_a, tab_b = await sockets.open(pod_a, "alice"), await sockets.open(pod_b, "alice")
    await tab_a.send({"type": "typing", "room": room})
    typing = await bob.wait_for(lambda f: f["type"] == "typing")
    assert typing == {"type": "typing", "room": room, "user": "alice"}
    for _ in range(3):
        await tab_b.send({"type": "typing", "room": room})
    # A marker: the message is published after the typing notices were dealt with.
    ack = await tab_b.publish(room, "after typing")
    await bob.wait_for(lambda f: f["type"] == "message" and f["seq"] == ack["seq"])
    assert [f for f in bob.frames if f["type"] == "typing"] == [typing]
    assert [f["type"] for f in tab_b.frames] == ["ack"]  # dropped without an error


async def test_read_state_moves_forward_only_and_reaches_the_other_tab(
    stack: Stack, sockets: Sockets, pod_a: Pod, pod_b: Pod, room: str
) -> None:
    tab_a, tab_b = await sockets.open(pod_a, "alice"), await sockets.open(pod_b, "alice")
    for i in range(3):
        await tab_a.publish(room, f"m{i}")

    async def read(tab: WsClient, seq: int) -> Frame:
        return await tab.request({"type": "read", "room": room, "seq": seq})

    answer = await read(tab_a, 2)
    assert answer == {
        "type": "unread",
        "ref": answer["ref"],
        "room": room,
        "count": 1,
        "last_read_seq": 2,
    }
    other = await tab_b.wait_for(lambda f: f["type"] == "unread")
    assert other == {"type": "unread", "room": room, "count": 1, "last_read_seq": 2}
    assert (await read(tab_a, 1))["last_read_seq"] == 2  # never back
    assert (await read(tab_b, 99))["last_read_seq"] == 3  # clamped to the room's last
    await tab_a.wait_for(lambda f: f["type"] == "unread" and "ref" not in f)
    markers = [f["last_read_seq"] for f in tab_b.frames if f["type"] == "unread"]
    assert markers == [2, 3]
    rooms = Http(pod_b.url, token=stack.tokens["alice"])
    listed = {r["slug"]: r for r in (await rooms.get("/api/rooms")).json()["rooms"]}
    assert listed[room]["unread"] == 0
