"""The /ws/ protocol end to end: two uvicorn pods, real PostgreSQL and Redis (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.http_client import Http, history
from tests.e2e.servers import Pod, SpawnPod
from tests.e2e.wsclient import (
    Frame,
    Sockets,
    WsClient,
    check_gap_free,
    check_room_delivery,
    publish_frame,
    types,
)

pytestmark = pytest.mark.e2e

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
MESSAGE_FIELDS = {"type", "room", "seq", "sender", "body", "client_msg_id", "ts"}


async def test_a_publish_is_acked_and_delivered_with_every_field(
    sockets: Sockets, pod_a: Pod, room: str
) -> None:
    reader = await sockets.open(pod_a, "alice")
    writer = await sockets.open(pod_a, "bob")
    subscribed = await reader.subscribe(room)
    assert subscribed == {
        "type": "subscribed",
        "ref": subscribed["ref"],
        "room": room,
        "last_seq": 0,
    }

    body = 'héllo 👋 <b>&amp;</b> "quoted"\nline two'
    ack = await writer.request(publish_frame(room, body, "6f1c-E2E:1.a_b"))

    assert ack == {
        "type": "ack",
        "ref": ack["ref"],
        "room": room,
        "seq": 1,
        "client_msg_id": "6f1c-E2E:1.a_b",
    }
    message = await reader.wait_for_seq(room, 1)
    assert set(message) == MESSAGE_FIELDS
    assert message["type"] == "message"
    assert message["room"] == room
    assert message["sender"] == "bob"
    assert message["body"] == body
    assert message["client_msg_id"] == "6f1c-E2E:1.a_b"
    assert TS_RE.match(message["ts"]), message["ts"]
    sent_at = datetime.fromisoformat(message["ts"])
    assert sent_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - sent_at) < timedelta(minutes=1)
    # The writer did not subscribe: it gets its ack and nothing else.
    await writer.ping()
    assert types(writer.frames) == ["ack", "pong"]


async def test_a_retried_publish_is_stored_once_with_the_same_seq(
    sockets: Sockets, pod_a: Pod, pod_b: Pod, room: str, alice_api: Http
) -> None:
    reader = await sockets.open(pod_a, "alice")
    await reader.subscribe(room)
    writer = await sockets.open(pod_a, "bob")

    first = await writer.publish(room, "only once", "retry-1")
    again = await writer.publish(room, "only once", "retry-1")
    # A retry after a reconnect, landing on the other pod.
    await writer.close()
    elsewhere = await sockets.open(pod_b, "bob")
    third = await elsewhere.publish(room, "only once", "retry-1")
    following = await elsewhere.publish(room, "next", "retry-2")

    assert first["seq"] == again["seq"] == third["seq"] == 1
    assert first["client_msg_id"] == again["client_msg_id"] == third["client_msg_id"] == "retry-1"
    assert following["seq"] == 2
    stored = await history(alice_api, room)
    assert [(m["seq"], m["client_msg_id"], m["body"]) for m in stored] == [
        (1, "retry-1", "only once"),
        (2, "retry-2", "next"),
    ]
    # A retry broadcasts nothing: the subscriber sees each message once.
    await reader.wait_for_seq(room, 2)
    await reader.ping()
    check_room_delivery(reader.frames, room, 1, 2)


async def test_a_client_resumes_on_the_other_pod_with_exactly_the_missed_messages(
    sockets: Sockets, pod_a: Pod, pod_b: Pod, room: str
) -> None:
    reader = await sockets.open(pod_a, "alice", name="reader")
    await reader.subscribe(room, since=0)
    writer = await sockets.open(pod_a, "bob")
    await writer.publish_many(room, [f"seen {i}" for i in range(5)])
    await reader.wait_for_seq(room, 5)
    check_room_delivery(reader.frames, room, 1, 5)
    seen_up_to = reader.seqs(room)[-1]
    await reader.close()

    other = await sockets.open(pod_b, "charlie")
    missed = await other.publish_many(room, [f"missed {i}" for i in range(7)])
    assert [a["seq"] for a in missed] == list(range(6, 13))

    back = await sockets.open(pod_b, "alice", name="reader again")
    subscribed = await back.subscribe(room, since=seen_up_to)
    assert subscribed["last_seq"] == 12
    backfill = back.frames[: back.frames.index(subscribed)]
    check_room_delivery(backfill, room, 6, 12)
    assert [m["body"] for m in backfill] == [f"missed {i}" for i in range(7)]

    await writer.publish_many(room, [f"live {i}" for i in range(3)])
    await back.wait_for_seq(room, 15)
    await back.ping()
    assert types(back.frames) == ["message"] * 7 + ["subscribed"] + ["message"] * 3 + ["pong"]
    check_room_delivery(back.frames, room, 6, 15)


async def test_a_client_of_a_killed_pod_resumes_on_another(
    sockets: Sockets, spawn_pod: SpawnPod, pod_a: Pod, room: str
) -> None:
    doomed = spawn_pod("pod-doomed")
    reader = await sockets.open(doomed, "alice", name="reader")
    await reader.subscribe(room, since=0)
    writer = await sockets.open(pod_a, "bob")
    await writer.publish_many(room, [f"before {i}" for i in range(3)])
    await reader.wait_for_seq(room, 3)

    doomed.kill()
    assert await reader.wait_closed() == 1006  # no close frame from a killed process
    await writer.publish_many(room, [f"while down {i}" for i in range(4)])
    back = await sockets.open(pod_a, "alice", name="reader again")
    subscribed = await back.subscribe(room, since=reader.seqs(room)[-1])

    assert subscribed["last_seq"] == 7
    check_room_delivery(reader.frames + back.frames, room, 1, 7)


async def test_resubscribing_restarts_from_the_new_since_and_unsubscribing_stops(
    sockets: Sockets, pod_a: Pod, pod_b: Pod, room: str
) -> None:
    reader = await sockets.open(pod_a, "alice")
    watcher = await sockets.open(pod_a, "charlie")
    await watcher.subscribe(room)
    writer = await sockets.open(pod_b, "bob")
    await writer.publish_many(room, ["one", "two", "three"])

    first = await reader.subscribe(room, since=0)
    again = await reader.subscribe(room, since=1)
    start = reader.frames.index(first) + 1
    check_room_delivery(reader.frames[start : reader.frames.index(again)], room, 2, 3)
    stopped = await reader.request({"type": "unsubscribe", "room": room})
    assert stopped == {"type": "unsubscribed", "ref": stopped["ref"], "room": room}
    # Published after the unsubscribe: the watcher on the same pod gets it, the reader not.
    ack = await writer.publish(room, "four")
    await watcher.wait_for_seq(room, ack["seq"])
    await reader.ping()

    check_room_delivery(reader.frames, room, 1, 3, allow_repeats=True)
    since_0 = ["message"] * 3 + ["subscribed"]
    since_1 = ["message"] * 2 + ["subscribed"]
    assert types(reader.frames) == [*since_0, *since_1, "unsubscribed", "pong"]


async def test_a_member_removed_from_a_private_room_is_unsubscribed_at_once(
    sockets: Sockets, pod_a: Pod, pod_b: Pod, private_room: str, alice_api: Http
) -> None:
    added = await alice_api.post(f"/api/rooms/{private_room}/members", {"username": "bob"})
    assert added.status == 201, added.text
    bob = await sockets.open(pod_b, "bob")
    await bob.subscribe(private_room)
    watcher = await sockets.open(pod_b, "alice")
    await watcher.subscribe(private_room)

    removed = await alice_api.delete(f"/api/rooms/{private_room}/members/bob")
    assert removed.status == 204, removed.text
    notice = await bob.wait_for(lambda f: f["type"] == "unsubscribed")
    assert notice == {"type": "unsubscribed", "room": private_room, "reason": "removed"}

    owner = await sockets.open(pod_a, "alice")
    ack = await owner.publish(private_room, "after bob left")
    await watcher.wait_for_seq(private_room, ack["seq"])
    refused = await bob.request({"type": "subscribe", "room": private_room, "since": 0})
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    assert bob.messages(private_room) == []


PREFILL = 1500
PUBLISHERS = 3
EACH = 150


async def prefill(sockets: Sockets, pods: tuple[Pod, Pod], room: str, count: int) -> None:
    """Store `count` messages fast: rounds of pipelined publishes on both pods at once.

    Fresh connections each round keep every one short-lived, so a slow machine
    tests the backfill, not how long a connection survives (the idle test does).
    """
    per_round = [(pods[0], "bob"), (pods[1], "bob"), (pods[0], "charlie")]
    batch = 100
    stored = 0
    while stored < count:
        clients = [await sockets.open(pod, user) for pod, user in per_round]
        sizes = [min(batch, count - stored - i * batch) for i in range(len(clients))]
        await asyncio.gather(
            *(
                c.publish_many(room, [f"old {stored + i * batch + j}" for j in range(n)], within=30)
                for i, (c, n) in enumerate(zip(clients, sizes, strict=True))
                if n > 0
            )
        )
        await asyncio.gather(*(c.close() for c in clients))
        stored += sum(max(n, 0) for n in sizes)


async def test_a_backfill_stays_gap_free_while_others_publish_on_both_pods(
    sockets: Sockets, pod_a: Pod, pod_b: Pod, room: str
) -> None:
    await prefill(sockets, (pod_a, pod_b), room, PREFILL)
    publishers = [
        await sockets.open(pod, user)
        for pod, user in ((pod_a, "bob"), (pod_b, "charlie"), (pod_b, "alice"))
    ]
    reader = await sockets.open(pod_a, "alice", name="reader")

    async def publish(n: int, client: WsClient) -> list[Frame]:
        return await client.publish_many(room, [f"new {n}.{i}" for i in range(EACH)], within=60)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(publish(n, p)) for n, p in enumerate(publishers)]
        # Subscribe once every publisher has a message stored, so publishes are in flight
        # on both pods while the backfill runs.
        for p in publishers:
            await p.wait_for(lambda f: f["type"] == "ack")
        subscribed = await reader.subscribe(room, since=0, within=60)
    acks = [ack for task in tasks for ack in task.result()]

    total = PREFILL + PUBLISHERS * EACH
    check_gap_free(sorted(a["seq"] for a in acks), PREFILL + 1, total)
    await reader.wait_for_seq(room, total, within=60)
    await reader.ping()
    check_room_delivery(reader.frames, room, 1, total)
    # Everything up to subscribed.last_seq came before `subscribed`, the rest after it.
    position = reader.frames.index(subscribed)
    last = subscribed["last_seq"]
    assert PREFILL < last <= total
    check_room_delivery(reader.frames[:position], room, 1, last)
    check_room_delivery(reader.frames[position + 1 :], room, last + 1, total)


@pytest.mark.parametrize("publisher_pod", [0, 1], ids=["published-on-a", "published-on-b"])
async def test_a_message_reaches_subscribers_on_every_pod(
    sockets: Sockets, pods: tuple[Pod, Pod], room: str, publisher_pod: int
) -> None:
    readers = [await sockets.open(pod, "alice") for pod in pods]
    for reader in readers:
        await reader.subscribe(room)
    writer = await sockets.open(pods[publisher_pod], "bob")

    ack = await writer.publish(room, "across pods")

    for reader in readers:
        message = await reader.wait_for_seq(room, ack["seq"])
        assert (message["sender"], message["body"]) == ("bob", "across pods")
        await reader.ping()
        check_room_delivery(reader.frames, room, 1, 1)


# Longer than two of channels_redis' 5-second BZPOPMIN waits on the consumer's channel.
IDLE_SECONDS = 11.0


async def test_an_idle_connection_stays_open_and_keeps_receiving(
    sockets: Sockets, pod_a: Pod, pod_b: Pod, room: str
) -> None:
    reader = await sockets.open(pod_a, "alice")
    await reader.subscribe(room)

    # The event awaited is a close that must not come: waiting out the timeout is the test.
    started = time.monotonic()
    try:
        code = await reader.wait_closed(within=IDLE_SECONDS)
    except TimeoutError:
        pass
    else:
        pytest.fail(
            f"the server closed an idle connection after {time.monotonic() - started:.1f}s "
            f"with code {code}; {pod_a.last_words()}"
        )

    writer = await sockets.open(pod_b, "bob")
    ack = await writer.publish(room, "after a quiet spell")
    await reader.wait_for_seq(room, ack["seq"])
    await reader.ping()
    check_room_delivery(reader.frames, room, 1, 1)
