"""Redis with Sentinel: the master SIGKILLed mid-stream, a replica promoted, nothing lost.

One master, one replica and three sentinels, all throwaway on loopback ports, started
here; two uvicorn pods configured with REDIS_SENTINELS (no REDIS_URL); readers on
both pods and writers publishing all along. The master is killed with SIGKILL;
Sentinel promotes the replica, every client the app made finds it (the pods' feeds
resubscribe there), and every reader ends with every message exactly once, in order
(the `Ledger` of tests/e2e/faults.py). The longest stall in delivery is printed
(docs/guarantees.md quotes it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from kombu.connection import Connection as BrokerConnection
from pytest_redis.config import get_config

from cluster.procs import FORBIDDEN_PORTS, free_port
from project.redis_config import SentinelConfig
from realtime import redis_clients
from tests.e2e.failover import delivered_since, keep_writing, longest_stall
from tests.e2e.faults import Ledger, ReturningClient
from tests.e2e.http_client import Http, history
from tests.e2e.processes import poll_until
from tests.e2e.servers import SpawnPod, Stack

pytestmark = pytest.mark.e2e

MASTER = "chatmaster"
DOWN_AFTER_MS = 1000  # a sentinel calls the master down after this long without an answer
FAILOVER_TIMEOUT_MS = 5000
READY_WITHIN = 20.0  # replica in sync, sentinels aware of it and of each other
PROMOTED_WITHIN = 20.0
PACE = 0.05  # seconds between one writer's publishes: before, during and after the failover
BEFORE_KILL = 40  # acks before the master is killed
AFTER_BACK = 20  # acks after every reader got a delivery again
STALL_BOUND = 20.0
QUEUE = "sentinel-e2e-queue"  # a broker queue this test fills


@dataclass
class SentinelTopology:
    """A master, a replica and three sentinels: real redis-server processes."""

    executable: str
    directory: Path
    master_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ports = [self.master_port, self.replica_port, *self.sentinel_ports]
        assert not FORBIDDEN_PORTS & set(ports), "refusing the machine's own Redis"

    @property
    def config(self) -> SentinelConfig:
        return SentinelConfig(
            nodes=tuple(("127.0.0.1", port) for port in self.sentinel_ports), master=MASTER
        )

    def _server(self, name: str, port: int, *args: str) -> None:
        log = (self.directory / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [
                *(self.executable, *args, "--port", str(port), "--bind", "127.0.0.1"),
                *("--dir", str(self.directory), "--save", "", "--appendonly", "no"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start(self) -> None:
        self._server("master", self.master_port)
        self._server(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port)
        )
        _wait(lambda: _info(self.replica_port).get("master_link_status") == "up", "replica sync")
        for n, port in enumerate(self.sentinel_ports):
            conf = self.directory / f"sentinel-{n}.conf"  # a sentinel rewrites its own file
            conf.write_text(
                f"sentinel monitor {MASTER} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            )
            self._server(f"sentinel-{n}", port, str(conf), "--sentinel")

        def aware() -> bool:
            for port in self.sentinel_ports:
                with _sentinel(port) as client:
                    state: Any = client.sentinel_master(MASTER)
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                    return False
            return True

        _wait(aware, "sentinels aware of the replica and of each other")

    def master_address(self) -> int:
        with _sentinel(self.sentinel_ports[0]) as client:
            address: Any = client.sentinel_get_master_addr_by_name(MASTER)
            return int(address[1])

    def kill_master(self) -> None:
        proc = self.procs["master"]
        proc.kill()  # SIGKILL
        proc.wait(5)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def _sentinel(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)


def _info(port: int) -> dict[str, Any]:
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
            info: dict[str, Any] = client.info("replication")
            return info
    except redis.RedisError:
        return {}


def _wait(check: Callable[[], bool], what: str, within: float = READY_WITHIN) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(redis.RedisError, KeyError):
            if check():
                return
        assert time.monotonic() < deadline, f"no {what} within {within}s"
        time.sleep(0.1)  # polling servers that announce nothing; bounded by the deadline


@pytest.fixture
def sentinels(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SentinelTopology]:
    topology = SentinelTopology(get_config(request).exec, tmp_path_factory.mktemp("sentinel"))
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


def broker_put(config: SentinelConfig, body: str) -> None:
    """A message into a queue through Celery's broker settings (kombu's Sentinel transport)."""
    url, options = config.celery_broker()
    # kombu is only partly typed.
    connection = BrokerConnection(url, transport_options=options)  # type: ignore[no-untyped-call]
    with connection as broker:
        queue = broker.SimpleQueue(QUEUE)
        queue.put({"body": body})
        queue.close()


async def test_a_sentinel_failover_loses_repeats_and_reorders_nothing(
    stack: Stack,
    spawn_pod: SpawnPod,
    returning: Callable[..., ReturningClient],
    sentinels: SentinelTopology,
    room: str,
) -> None:
    url = sentinels.config.url()
    nodes = ",".join(f"{host}:{port}" for host, port in sentinels.config.nodes)
    env = {
        "REDIS_URL": "",  # the stack's single Redis: not this test's
        "REDIS_SENTINELS": nodes,
        "REDIS_SENTINEL_MASTER": MASTER,
        "MAX_CONNECTIONS_PER_USER": "1000",
    }
    pods = (spawn_pod("pod-s1", env), spawn_pod("pod-s2", env))
    ledger = Ledger()
    readers = [
        returning(f"reader-on-{home.name}", stack.tokens["alice"], [home, other], room)
        for home, other in (pods, pods[::-1])
    ]
    writers = [
        returning(f"{user}-on-{home.name}", stack.tokens[user], [home, other], room)
        for user, (home, other) in zip(("bob", "charlie"), (pods, pods[::-1]), strict=True)
    ]
    for client in readers + writers:
        await client.connection()
    # Every kind of client the app makes, made before the failover and used after it.
    publisher = redis_clients.publisher(url)
    async_publisher = redis_clients.async_publisher(url)
    limits = redis_clients.limits_client(url)
    assert publisher.set("sentinel-e2e", "before")
    assert await async_publisher.get("sentinel-e2e") == b"before"
    assert await limits.get("sentinel-e2e") == b"before"
    await asyncio.to_thread(broker_put, sentinels.config, "before")

    stop = asyncio.Event()

    async with asyncio.timeout(50), asyncio.TaskGroup() as group:
        for client in writers:
            group.create_task(keep_writing(client, ledger, stop, PACE))
        await ledger.wait_for_acks(BEFORE_KILL)
        await asyncio.to_thread(sentinels.kill_master)
        killed = time.monotonic()
        await poll_until(
            lambda: sentinels.master_address() == sentinels.replica_port,
            within=PROMOTED_WITHIN,
        )
        promoted = time.monotonic() - killed

        def all_delivering() -> bool:
            return all(delivered_since(client, room, killed) for client in readers)

        await poll_until(all_delivering, within=STALL_BOUND)
        await ledger.wait_for_acks(len(ledger.acks) + AFTER_BACK, within=STALL_BOUND)
        stop.set()

    total = len(ledger.acks)
    for client in readers + writers:
        await client.wait_for_seq(total, within=STALL_BOUND)
    stored = await history(Http(pods[0].url, token=stack.tokens["alice"]), room)
    assert len(stored) == total
    for client in readers + writers:
        ledger.delivered(client.name, room, client.frames, first=1)
    ledger.check(room, stored)

    stalls = {client.name: longest_stall(client, room, killed) for client in readers}
    print(  # the measurement docs/guarantees.md quotes
        f"\nsentinel failover: replica promoted {promoted:.2f}s after the kill; longest "
        f"delivery stall per reader: "
        + ", ".join(f"{name} {stall:.2f}s" for name, stall in stalls.items())
        + f"; {total} messages"
    )
    assert max(stalls.values()) < STALL_BOUND

    # The same client objects now reach the promoted replica; the pods say they are ready.
    assert publisher.set("sentinel-e2e", "after")
    assert publisher.info("server")["tcp_port"] == sentinels.replica_port
    assert await async_publisher.get("sentinel-e2e") == b"after"
    assert await limits.get("sentinel-e2e") == b"after"
    await asyncio.to_thread(broker_put, sentinels.config, "after")
    with redis.Redis(port=sentinels.replica_port) as promoted_replica:
        queued = [
            json.loads(base64.b64decode(json.loads(raw)["body"]))["body"]
            for raw in promoted_replica.lrange(QUEUE, 0, -1)
        ]
        assert "after" in queued, queued
    for pod in pods:
        ready = await Http(pod.url).get("/readyz")
        assert ready.status == 200, ready.text
    publisher.close()
    await async_publisher.aclose()
    await limits.aclose()
