"""What the service promises when Redis breaks (docs/guarantees.md), with Redis really broken:
restarted, stopped, dropping idle clients, or expiring channel messages.

Each test breaks only a Redis server of its own, never the session's shared one. A
`Ledger` (tests/e2e/faults.py) records every acked publish and every delivery and
checks, per client and room, that nothing was lost, duplicated or reordered.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest
import redis
from pytest_redis.executor import RedisExecutor

from tests.e2e.faults import (
    Ledger,
    ReturningClient,
    assert_cap_refuses,
    connect_under_cap,
    publish_burst,
    redis_server,
    redis_url,
)
from tests.e2e.http_client import Http, create_room_sync, history
from tests.e2e.processes import poll_until
from tests.e2e.servers import SpawnPod, Stack
from tests.e2e.wsclient import Sockets, WsClient, check_room_delivery

pytestmark = pytest.mark.e2e


def restart_redis(server: RedisExecutor, during: Callable[[], None] = lambda: None) -> None:
    """Stop Redis, run `during` while it is down, start it again on the same port, empty.

    It comes back with nothing, like a restarted pod without persistence: every
    pub/sub subscription and channel-layer group must be made again.
    """
    with redis.Redis(host=server.host, port=server.port) as client:
        client.config_set("save", "")  # no snapshot on shutdown, so nothing is reloaded
    server.stop()
    during()
    server.start()


# Redis restarted mid-stream.

PER_WRITER = 40
WRITERS_PER_USER = 3  # per pod: many sockets coming back at once after the restart
DURING_OUTAGE = 10
REDIS_RECOVERY = 20.0  # the fan-out's reconnect backoff tops out at 5 s


async def test_after_a_redis_restart_every_subscriber_gets_every_message_once_in_order(
    stack: Stack,
    spawn_pod: SpawnPod,
    returning: Callable[..., ReturningClient],
    own_redis: RedisExecutor,
    room: str,
) -> None:
    # Reconnecting clients must not run into the per-user cap here (see the next test).
    env = {"REDIS_URL": redis_url(own_redis), "MAX_CONNECTIONS_PER_USER": "1000"}
    pods = (spawn_pod("pod-r1", env), spawn_pod("pod-r2", env))
    ledger = Ledger()
    readers = [
        returning(f"reader-on-{home.name}", stack.tokens["alice"], [home, other], room)
        for home, other in (pods, pods[::-1])
    ]
    writers = [
        returning(f"{user}{n}-on-{home.name}", stack.tokens[user], [home, other], room)
        for home, other in (pods, pods[::-1])
        for user in ("bob", "charlie")
        for n in range(WRITERS_PER_USER)
    ]
    for client in readers + writers:
        await client.connection()
    http_clients = [Http(pod.url, token=stack.tokens["charlie"]) for pod in pods]
    outage_ids = itertools.count()

    over_http: list[tuple[str, str, int]] = []  # (client, client_msg_id, seq)

    def publish_over_http(count: int) -> None:
        """Publish through both pods over HTTP, which needs no Redis to store a message."""
        for _ in range(count):
            for n, client in enumerate(http_clients):
                cmid = f"http-{n}.{next(outage_ids)}"
                answer = client.request_sync(
                    "POST",
                    f"/api/rooms/{room}/messages",
                    json_body={"body": cmid, "client_msg_id": cmid},
                )
                assert answer.status == 201, answer.text
                over_http.append((f"http-on-{pods[n].name}", cmid, answer.json()["seq"]))

    async def publish(client: ReturningClient) -> None:
        items = [(f"{client.name}.{i}", f"{client.name} says {i}") for i in range(PER_WRITER)]
        await client.publish_all(items, window=2, on_ack=ledger)

    async with asyncio.TaskGroup() as group:
        for client in writers:
            group.create_task(publish(client))
        await ledger.wait_for_acks(PER_WRITER // 2)
        await asyncio.to_thread(restart_redis, own_redis, lambda: publish_over_http(DURING_OUTAGE))
        back = time.monotonic()
    # After it is back, through either pod.
    await asyncio.to_thread(publish_over_http, 1)
    for name, cmid, seq in over_http:
        ledger.acked(name, room, cmid, seq)
    total = len(ledger.acks)
    for client in readers + writers:
        await client.wait_for_seq(total, within=REDIS_RECOVERY)
    caught_up = time.monotonic() - back

    stored = await history(Http(pods[0].url, token=stack.tokens["alice"]), room)
    assert len(stored) == total
    for client in readers + writers:
        ledger.delivered(client.name, room, client.frames, first=1)
    ledger.check(room, stored)
    assert caught_up < REDIS_RECOVERY


async def test_after_a_redis_restart_a_member_removal_still_reaches_an_open_socket(
    stack: Stack,
    spawn_pod: SpawnPod,
    returning: Callable[..., ReturningClient],
    own_redis: RedisExecutor,
) -> None:
    pod = spawn_pod("pod-r", {"REDIS_URL": redis_url(own_redis)})
    owner = Http(pod.url, token=stack.tokens["alice"])
    secret = create_room_sync(owner, private=True, prefix="secret")
    added = await owner.post(f"/api/rooms/{secret}/members", {"username": "bob"})
    assert added.status == 201, added.text
    bob = returning("bob", stack.tokens["bob"], [pod], secret)
    await bob.connection()

    await asyncio.to_thread(restart_redis, own_redis)
    posted = await owner.post(f"/api/rooms/{secret}/messages", {"body": "hi", "client_msg_id": "1"})
    assert posted.status == 201, posted.text
    await bob.wait_for_seq(1, within=REDIS_RECOVERY)
    removed = await owner.delete(f"/api/rooms/{secret}/members/bob")
    assert removed.status == 204, removed.text

    conn = await bob.connection()
    notice = await conn.wait_for(lambda f: f["type"] == "unsubscribed")
    assert notice == {"type": "unsubscribed", "room": secret, "reason": "removed"}


async def test_sockets_dropped_by_a_redis_restart_do_not_count_against_the_connection_cap(
    stack: Stack, spawn_pod: SpawnPod, own_redis: RedisExecutor, room: str
) -> None:
    cap = 4
    env = {"REDIS_URL": redis_url(own_redis), "MAX_CONNECTIONS_PER_USER": str(cap)}
    pod = spawn_pod("pod-cap", env)
    before = [await WsClient.connect(pod.ws_url, token=stack.tokens["bob"]) for _ in range(cap)]
    for client in before:
        await client.subscribe(room)

    await asyncio.to_thread(restart_redis, own_redis)
    # Whatever the outage did to them, the user hangs up every one of these.
    for client in before:
        await client.close()

    after = [await connect_under_cap(pod, stack.tokens["bob"]) for _ in range(cap)]
    for client in after:
        await client.subscribe(room)
        await client.close()


OUTAGE_BUDGET = 3


async def test_with_redis_stopped_per_user_limits_are_each_pods_own_until_it_is_back(
    stack: Stack, spawn_pod: SpawnPod, own_redis: RedisExecutor, sockets: Sockets, room: str
) -> None:
    env = {
        "REDIS_URL": redis_url(own_redis),
        "MAX_CONNECTIONS_PER_USER": "2",
        "USER_PUBLISH_RATE": "0.1",  # no refill within the test
        "USER_PUBLISH_BURST": str(OUTAGE_BUDGET),
        "PUBLISH_RATE": "1000",
        "PUBLISH_BURST": "1000",
        "RATE_STRIKES": "1000",
        "CONNECTION_REFRESH_SECONDS": "0.5",
    }
    pod = spawn_pod("pod-limits-outage", env)
    held = [await sockets.open(pod, "bob") for _ in range(2)]
    for client in held:
        await client.ping()
    with redis.Redis(host=own_redis.host, port=own_redis.port) as client:
        client.config_set("save", "")  # it comes back empty
    await asyncio.to_thread(own_redis.stop)

    # The cap holds on the pod's own count, answered without waiting on Redis.
    await assert_cap_refuses(pod, stack.tokens["bob"], within=2.0)
    # And the user's budget is the pod's own: of a burst of twice it, exactly it gets through.
    answers = await publish_burst(held, room, 2 * OUTAGE_BUDGET)
    assert [a["type"] for a in answers].count("ack") == OUTAGE_BUDGET, answers
    assert [a.get("code") for a in answers].count("rate_limited") == OUTAGE_BUDGET, answers

    await asyncio.to_thread(own_redis.start)
    # Back on Redis: the pod announces its live sockets again, and budgets live there.
    with redis.Redis(host=own_redis.host, port=own_redis.port) as client:

        def counted() -> int:
            return sum(client.zcard(key) for key in client.scan_iter("chat:conns:*"))

        await poll_until(lambda: counted() == 2, within=5.0)
        await held[0].publish(room, "after the outage")
        assert list(client.scan_iter("chat:limits:*")), "the budget is not kept in Redis"


async def test_redis_connections_closed_by_the_server_while_idle_are_opened_again(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    spawn_pod: SpawnPod,
    sockets: Sockets,
    room: str,
) -> None:
    # Redis (like a proxy, a NAT or a managed Redis) drops clients idle for a second.
    with redis_server(request, tmp_path_factory, idle_timeout=1) as server:
        pod = spawn_pod("pod-idle-redis", {"REDIS_URL": redis_url(server)})
        reader = await sockets.open(pod, "alice", name="reader")
        await reader.subscribe(room)
        writer = await sockets.open(pod, "bob", name="writer")
        await writer.publish(room, "before")
        await reader.wait_for_seq(room, 1)
        await writer.close()

        def only_busy_clients_left() -> bool:
            # Pub/sub and blocked clients are exempt from the timeout; the rest are idle.
            with redis.Redis(host=server.host, port=server.port) as client:
                listed = client.client_list()
            return all("P" in c["flags"] or c["cmd"] in ("bzpopmin", "client|list") for c in listed)

        await poll_until(only_busy_clients_left, within=10)
        # A new socket joins its user group and subscribes over the pod's pooled connections.
        writer = await sockets.open(pod, "bob", name="writer again")
        await writer.subscribe(room)
        ack = await writer.publish(room, "after")
        # The broadcast goes out over the publisher's connection, idle until now.
        await reader.wait_for_seq(room, ack["seq"])
        check_room_delivery(reader.frames, room, 1, 2)


# A connection held past the channel layer's message expiry.

EXPIRY = 3
HOLD_SECONDS = 7.0


async def test_a_connection_held_past_the_layer_expiry_still_gets_messages_and_removals(
    stack: Stack, spawn_pod: SpawnPod, own_redis: RedisExecutor, sockets: Sockets
) -> None:
    env = {"REDIS_URL": redis_url(own_redis), "CHANNEL_EXPIRY_SECONDS": str(EXPIRY)}
    pod = spawn_pod("pod-expiry", env)
    # Everything goes through this pod, whose layer drops channel messages older than 3 s;
    # a socket's events do not wait in a channel, however long it has been open.
    owner = Http(pod.url, token=stack.tokens["alice"])
    secret = create_room_sync(owner, private=True, prefix="secret")
    added = await owner.post(f"/api/rooms/{secret}/members", {"username": "bob"})
    assert added.status == 201, added.text
    bob = await sockets.open(pod, "bob")
    await bob.subscribe(secret, since=0)

    # The event awaited is a close that must not come: waiting out the timeout is the test.
    with pytest.raises(TimeoutError):
        await bob.wait_closed(within=HOLD_SECONDS)

    posted = await owner.post(f"/api/rooms/{secret}/messages", {"body": "hi", "client_msg_id": "1"})
    assert posted.status == 201, posted.text
    await bob.wait_for_seq(secret, 1)
    removed = await owner.delete(f"/api/rooms/{secret}/members/bob")
    assert removed.status == 204, removed.text
    notice = await bob.wait_for(lambda f: f["type"] == "unsubscribed")
    assert notice == {"type": "unsubscribed", "room": secret, "reason": "removed"}
    check_room_delivery(bob.frames, secret, 1, 1)
