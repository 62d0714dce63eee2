"""The event feed (Redis) failing under an open socket: answers, not drops, and nothing hidden.

Each test breaks a Redis server of its own, under pods of its own.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from pytest_redis.executor import RedisExecutor

from tests.e2e.faults import redis_url
from tests.e2e.http_client import Http
from tests.e2e.processes import frozen
from tests.e2e.servers import SpawnPod, Stack
from tests.e2e.wsclient import Sockets

pytestmark = pytest.mark.e2e

# How late a broadcast Redis missed may reach a quiet room's subscribers once it answers
# again (docs/guarantees.md): REBROADCAST_SECONDS (0.5), a publish's own timeout (2 s)
# if a retry was under way when Redis froze, and a round trip.
REBROADCAST_BOUND = 0.5 + 2 + 1.0


async def test_a_subscribe_while_redis_is_down_answers_unavailable_and_the_socket_stays(
    stack: Stack, spawn_pod: SpawnPod, own_redis: RedisExecutor, sockets: Sockets, room: str
) -> None:
    pod = spawn_pod("pod-feed-down", {"REDIS_URL": redis_url(own_redis)})
    client = await sockets.open(pod, "alice")
    await client.ping()
    await asyncio.to_thread(own_redis.stop)

    answer = await client.request({"type": "subscribe", "room": room})
    assert answer["type"] == "error", answer
    assert answer["code"] == "unavailable", answer
    assert "subscribe" in answer["message"], answer
    assert "client_msg_id" not in answer["message"], answer
    await client.ping()  # still open, still answering

    await asyncio.to_thread(own_redis.start)
    # Once Redis is back the same socket subscribes, and gets what is published there.
    deadline = time.monotonic() + 15
    while (answer := await client.request({"type": "subscribe", "room": room}))["type"] == "error":
        assert answer["code"] == "unavailable", answer
        assert time.monotonic() < deadline, "still unavailable 15 s after Redis is back"
        await asyncio.sleep(0.2)  # nothing announces that the feed has reconnected
    assert answer["type"] == "subscribed", answer
    posted = await Http(pod.url, token=stack.tokens["bob"]).post(
        f"/api/rooms/{room}/messages", {"body": "back", "client_msg_id": "back-1"}
    )
    assert posted.status == 201, posted.text
    await client.wait_for_seq(room, posted.json()["seq"])


async def test_a_broadcast_redis_missed_while_frozen_reaches_a_quiet_rooms_subscribers(
    stack: Stack, spawn_pod: SpawnPod, own_redis: RedisExecutor, sockets: Sockets, room: str
) -> None:
    env = {"REDIS_URL": redis_url(own_redis)}
    writer_pod, reader_pod = spawn_pod("pod-frozen-a", env), spawn_pod("pod-frozen-b", env)
    reader = await sockets.open(reader_pod, "alice", name="reader")
    await reader.subscribe(room)
    writer = Http(writer_pod.url, token=stack.tokens["bob"])
    redis_pid = own_redis.process.pid  # type: ignore[union-attr]  # started above

    with frozen([redis_pid]):
        # Stored and acknowledged; its PUBLISH times out against the frozen server.
        posted = await writer.post(
            f"/api/rooms/{room}/messages", {"body": "while frozen", "client_msg_id": "f-1"}
        )
        assert posted.status == 201, posted.text
        await asyncio.sleep(1.0)  # frozen a while longer: the retries fail too
    thawed = time.monotonic()
    # Nothing else is published in the room: only a retry of that broadcast can bring it.
    arrived = await reader.wait_for_seq(room, posted.json()["seq"], within=REBROADCAST_BOUND + 5)
    late = time.monotonic() - thawed
    assert arrived["body"] == "while frozen"
    assert late < REBROADCAST_BOUND, f"arrived {late:.1f}s after Redis answered again"
    await reader.ping()
