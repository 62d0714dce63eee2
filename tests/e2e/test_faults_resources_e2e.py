"""Clients that strain a pod's resources (docs/guarantees.md): a slow consumer in a busy
room, ten thousand connect/disconnect cycles and a stream of oversized frames; the pod's
memory, files and Redis keys stay bounded and other clients are unaffected.

Each test breaks only what it owns: a pod it started itself, or a Redis server of its
own, never the session's shared ones (the oversized frames are refused by a shared pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable

import pytest
import redis
from pytest_redis.executor import RedisExecutor
from websockets.exceptions import ConnectionClosed

from tests.e2e.faults import redis_url
from tests.e2e.http_client import Http, create_room_sync
from tests.e2e.processes import (
    holds_connection,
    open_fds,
    pid_of,
    poll_until,
    rss_bytes,
    tcp_sockets,
)
from tests.e2e.raw_ws import RawWs
from tests.e2e.servers import Pod, SpawnPod, Stack
from tests.e2e.wsclient import Frame, Sockets, WsClient, check_gap_free, check_room_delivery

pytestmark = pytest.mark.e2e


def dbsize(server: RedisExecutor) -> int:
    with redis.Redis(host=server.host, port=server.port) as client:
        size: int = client.dbsize()
        return size


# A slow consumer in a busy room.

SLOW_CLIENT_SECONDS = 3.0
BURST = 3000  # messages, from two publishers
BODY_CHARS = 3000  # big enough that the burst outgrows the kernel's socket buffers
BATCH = 50
RSS_GROWTH_LIMIT = 50 * 2**20
CUT_OFF_SLACK = 10.0
FAST_P99, FAST_WORST = 2.0, 5.0  # seconds from the batch's send to a fast subscriber


async def test_a_slow_consumer_is_cut_off_with_bounded_memory_and_others_are_unaffected(
    stack: Stack, spawn_pod: SpawnPod, own_redis: RedisExecutor, sockets: Sockets, room: str
) -> None:
    env = {"REDIS_URL": redis_url(own_redis)}
    pod = spawn_pod("pod-slow", {**env, "SLOW_CLIENT_SECONDS": str(SLOW_CLIENT_SECONDS)})
    other = spawn_pod("pod-other", env)
    pid = pid_of(pod)
    fast = [await sockets.open(p, "alice", name=f"fast@{p.name}") for p in (pod, other)]
    for client in fast:
        await client.subscribe(room, since=0)
    # A tiny receive buffer (and window), and a reader that takes one frame a second.
    slow = await RawWs.connect(pod, stack.tokens["charlie"], rcvbuf=4096, limit=4096)
    await slow.send({"type": "subscribe", "ref": "s", "room": room, "since": 0})
    await slow.until("subscribed")
    publishers = [await sockets.open(pod, "bob", name=f"publisher {n}") for n in range(2)]
    sent_at: dict[str, float] = {}
    slow_frames: list[Frame] = []
    drain = asyncio.Event()
    baseline = peak = rss_bytes(pid)

    async def read_slowly() -> None:
        while (frame := await slow.receive()) is not None:
            slow_frames.append(frame)
            # One frame a second (that is what makes it slow) until told to drain.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain.wait(), 1.0)

    def sample() -> bool:
        nonlocal peak
        peak = max(peak, rss_bytes(pid))
        return False

    async def publish(n: int, client: WsClient) -> None:
        for start in range(0, BURST // len(publishers), BATCH):
            keys = [f"{n}.{i}" for i in range(start, start + BATCH)]
            now = time.monotonic()
            sent_at.update((key, now) for key in keys)
            await client.publish_many(room, [f"{k} {'x' * BODY_CHARS}" for k in keys], within=30)

    reader = asyncio.create_task(read_slowly())
    sampler = asyncio.create_task(poll_until(sample, within=300))
    cut_off: float | None = None
    try:
        async with asyncio.TaskGroup() as group:
            for n, client in enumerate(publishers):
                group.create_task(publish(n, client))
        burst_over = time.monotonic()
        for client in fast:
            await client.wait_for_seq(room, BURST, within=30)
        # The server lets go of the slow socket: its end of the TCP connection is closed.
        with contextlib.suppress(TimeoutError):
            await poll_until(
                lambda: not holds_connection(pid, pod.port, slow.local_port),
                within=SLOW_CLIENT_SECONDS + CUT_OFF_SLACK,
            )
            cut_off = time.monotonic() - burst_over
        sampler.cancel()
        drain.set()
        await asyncio.wait_for(reader, 30)
    finally:
        sampler.cancel()
        reader.cancel()
        slow.abort()

    # Everyone else got every message, in order, without waiting on the slow one.
    latencies = sorted(
        arrived - sent_at[frame["body"].split(" ", 1)[0]]
        for client in fast
        for frame, arrived in zip(client.frames, client.arrived, strict=True)
        if frame["type"] == "message"
    )
    for client in fast:
        check_room_delivery(client.frames, room, 1, BURST)
    p99, worst = latencies[int(len(latencies) * 0.99)], latencies[-1]
    assert p99 < FAST_P99, f"p99 {p99:.2f}s, worst {worst:.2f}s"
    assert worst < FAST_WORST, f"p99 {p99:.2f}s, worst {worst:.2f}s"
    # The server's memory stayed bounded while it held the slow socket.
    assert peak - baseline < RSS_GROWTH_LIMIT, f"RSS grew {(peak - baseline) / 2**20:.0f} MiB"
    # What the slow consumer did get was gap-free, and resuming from it loses nothing.
    seen = [f["seq"] for f in slow_frames if f["type"] == "message"]
    check_gap_free(seen, 1, len(seen))
    assert len(seen) < BURST, "the slow consumer got everything: it was never behind"
    back = await sockets.open(pod, "charlie", name="slow, back")
    await back.subscribe(room, since=len(seen))
    await back.wait_for_seq(room, BURST)
    check_room_delivery(back.frames, room, len(seen) + 1, BURST)
    # It was cut off as docs/protocol.md says, after SLOW_CLIENT_SECONDS: a 4002 close frame
    # queued behind what it has not read, and the connection dropped when it did not read up
    # to it within the grace period, which a client taking one frame a second cannot.
    assert cut_off is not None, (
        f"the server still holds the slow socket {SLOW_CLIENT_SECONDS + CUT_OFF_SLACK:.0f}s "
        "after the burst, while it reads one frame a second"
    )
    assert slow.close_code in (4002, None), f"closed with {slow.close_code}, not 4002 or a drop"


# Ten thousand connect/disconnect cycles.

CYCLES = 10_000
WARM_UP = 500
WORKERS = 20
CHURN_WITHIN = 150.0
RSS_SLACK = 16 * 2**20
FD_SLACK = 2
KEY_SLACK = 2
# Redis client pools keep what peak concurrency opened (about two per worker), not one per cycle.
REDIS_CONNECTIONS_LIMIT = 3 * WORKERS


async def test_ten_thousand_connect_disconnect_cycles_leave_memory_files_and_keys_at_baseline(
    stack: Stack, spawn_pod: SpawnPod, own_redis: RedisExecutor, alice_api: Http
) -> None:
    env = {
        "REDIS_URL": redis_url(own_redis),
        "MAX_CONNECTIONS_PER_USER": str(WORKERS * 2),
        # A database pool of a fixed size, so its connections do not count as files leaked.
        "DATABASE_POOL_MIN_SIZE": "4",
        "DATABASE_POOL_MAX_SIZE": "4",
    }
    pod = spawn_pod("pod-churn", env)
    pid = pid_of(pod)
    # One room per worker: each cycle also subscribes and unsubscribes the pod's Redis channel.
    rooms = [await asyncio.to_thread(create_room_sync, alice_api) for _ in range(WORKERS)]
    users = ["alice", "bob", "charlie"]

    async def cycle(worker: int, n: int) -> None:
        client = await RawWs.connect(pod, stack.tokens[users[n % len(users)]])
        try:
            await client.send({"type": "subscribe", "ref": "s", "room": rooms[worker]})
            await client.until("subscribed")
            if n % 10 != 9:  # and one in ten vanishes without a closing handshake
                await client.close()
        finally:
            client.abort()

    async def run(cycles: int) -> float:
        numbers = itertools.count()

        async def worker(w: int) -> None:
            while (n := next(numbers)) < cycles:
                await cycle(w, n)

        started = time.monotonic()
        async with asyncio.timeout(CHURN_WITHIN):
            await asyncio.gather(*(worker(w) for w in range(WORKERS)))
        return time.monotonic() - started

    def gauges() -> dict[str, int]:
        redis_connections = tcp_sockets(pid, remote_port=own_redis.port)
        return {
            "rss": rss_bytes(pid),
            "client sockets": tcp_sockets(pid, local_port=pod.port) - 1,  # less the listener
            "other files": open_fds(pid) - redis_connections,
            "redis connections": redis_connections,
            "redis keys": dbsize(own_redis),
        }

    def idle() -> bool:
        return tcp_sockets(pid, local_port=pod.port) == 1 and dbsize(own_redis) == 0

    await run(WARM_UP)
    await settle(pid, idle)
    before = gauges()
    took = await run(CYCLES)
    # Hang-ups are handled after the client has gone: wait for the last of them.
    await settle(pid, idle)
    after = gauges()

    pod.assert_alive()
    report = f"{CYCLES} cycles in {took:.0f}s: {before} -> {after}"
    assert after["client sockets"] == before["client sockets"] == 0, report
    assert after["other files"] <= before["other files"] + FD_SLACK, report
    assert after["redis connections"] <= REDIS_CONNECTIONS_LIMIT, report
    assert after["redis keys"] <= before["redis keys"] + KEY_SLACK, report
    assert after["rss"] - before["rss"] < RSS_SLACK, report


async def settle(pid: int, check: Callable[[], bool], within: float = 10.0) -> None:
    """Until `check` holds and the pod's count of open files has stopped changing (or the
    time is up: the assertions that follow then say what did not settle)."""
    previous = -1

    def steady() -> bool:
        nonlocal previous
        now = open_fds(pid)
        stable, previous = now == previous, now
        return stable and check()

    with contextlib.suppress(TimeoutError):
        await poll_until(steady, within=within, every=0.2)


# A stream of oversized frames.

OVERSIZED_CONNECTIONS = 200
OVERSIZED_BYTES = 1 << 20  # 16 times the limit
OVERSIZED_RSS_LIMIT = 20 * 2**20


async def test_a_stream_of_oversized_frames_is_refused_with_1009_and_memory_stays_flat(
    sockets: Sockets, pod_a: Pod
) -> None:
    pid = pid_of(pod_a)
    baseline = rss_bytes(pid)
    peak = baseline
    payload = "x" * OVERSIZED_BYTES
    # In batches under the per-user connection cap; every frame is refused before it is read.
    for start in range(0, OVERSIZED_CONNECTIONS, 10):
        batch = [await sockets.open(pod_a, "bob") for _ in range(10)]
        for client in batch:
            with contextlib.suppress(ConnectionClosed):
                await client.send_raw(payload)
        assert [await client.wait_closed() for client in batch] == [1009] * 10, start
        peak = max(peak, rss_bytes(pid))
    assert peak - baseline < OVERSIZED_RSS_LIMIT, f"RSS grew {(peak - baseline) / 2**20:.0f} MiB"
    # The pod is fine afterwards.
    after = await sockets.open(pod_a, "bob")
    await after.ping()
