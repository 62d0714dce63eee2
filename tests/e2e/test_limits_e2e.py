"""Per-user limits hold across pods: one connection cap and one publish budget per user for
the whole cluster, kept in Redis (realtime/cluster_limits.py).

The pods here share a Redis of this module's own, so no other test's sockets count
against the caps; each test uses its own user.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from pytest_redis.executor import RedisExecutor

from tests.e2e.faults import (
    assert_cap_refuses,
    connect_under_cap,
    publish_burst,
    redis_server,
    redis_url,
)
from tests.e2e.http_client import Http, history
from tests.e2e.servers import Pod, SpawnPod, Stack
from tests.e2e.wsclient import Sockets

pytestmark = pytest.mark.e2e

CAP = 3
USER_BURST = 5
TTL = 2.0
LIMITED = {
    "MAX_CONNECTIONS_PER_USER": str(CAP),
    # The user's budget is the limit under test: 5 in a 50 s window, never refilled here.
    "USER_PUBLISH_RATE": "0.1",
    "USER_PUBLISH_BURST": str(USER_BURST),
    "PUBLISH_RATE": "1000",
    "PUBLISH_BURST": "1000",
    "RATE_STRIKES": "1000",
    "CONNECTION_TTL_SECONDS": str(TTL),
    "CONNECTION_REFRESH_SECONDS": "0.5",
}


@pytest.fixture(scope="module")
def limits_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisExecutor]:
    with redis_server(request, tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def limited_env(limits_redis: RedisExecutor) -> dict[str, str]:
    return {**LIMITED, "REDIS_URL": redis_url(limits_redis)}


@pytest.fixture(scope="module")
def limited_pods(stack: Stack, limited_env: dict[str, str]) -> Iterator[tuple[Pod, Pod]]:
    """Two pods with small per-user limits, sharing the module's Redis."""
    started: list[Pod] = []
    try:
        for name in ("pod-limits-1", "pod-limits-2"):
            started.append(stack.start_pod(name, env=limited_env))
        yield started[0], started[1]
    finally:
        for pod in started:
            pod.stop()


async def test_a_users_connection_cap_holds_across_pods(
    stack: Stack, limited_pods: tuple[Pod, Pod], sockets: Sockets
) -> None:
    token = stack.tokens["bob"]
    held = [await sockets.open(limited_pods[n % 2], "bob") for n in range(CAP)]
    for client in held:
        await client.ping()  # answered after connect(): the socket is counted

    for pod in limited_pods:
        await assert_cap_refuses(pod, token)

    await held[0].close()
    again = await connect_under_cap(limited_pods[1], token)
    sockets.clients.append(again)
    await again.ping()


async def test_a_users_publish_budget_is_shared_across_pods(
    stack: Stack, limited_pods: tuple[Pod, Pod], sockets: Sockets, room: str
) -> None:
    clients = [await sockets.open(pod, "charlie") for pod in limited_pods]
    # A tight burst, twice the budget, alternating between the pods.
    answers = await publish_burst(clients, room, 2 * USER_BURST)

    kinds = Counter(a["type"] if a["type"] == "ack" else a.get("code") for a in answers)
    # With a budget per pod, each would have let all its five through.
    assert kinds == {"ack": USER_BURST, "rate_limited": USER_BURST}, answers
    stored = await history(Http(limited_pods[0].url, token=stack.tokens["alice"]), room)
    assert sorted(m["seq"] for m in stored) == sorted(a["seq"] for a in answers if "seq" in a)


async def test_the_sockets_of_a_killed_pod_stop_counting_after_the_ttl(
    stack: Stack,
    limited_pods: tuple[Pod, Pod],
    limited_env: dict[str, str],
    spawn_pod: SpawnPod,
    sockets: Sockets,
) -> None:
    token = stack.tokens["alice"]
    doomed = spawn_pod("pod-limits-doomed", limited_env)
    for _ in range(CAP):
        await (await sockets.open(doomed, "alice")).ping()

    await asyncio.to_thread(doomed.kill)
    killed = time.monotonic()
    # Nobody hung those sockets up: they still count, until their last refresh expires.
    await assert_cap_refuses(limited_pods[0], token)
    back = await connect_under_cap(limited_pods[0], token, within=TTL + 3)
    sockets.clients.append(back)
    waited = time.monotonic() - killed
    assert waited <= TTL + 1.5, f"let in {waited:.1f}s after the kill"
