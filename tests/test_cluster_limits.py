"""The shared per-user limits on a real Redis, and what happens without one.

Two ClusterLimits stand for two processes; tests/e2e/test_limits_e2e.py runs real pods.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from django.test import override_settings

from cluster.procs import free_port
from realtime import cluster_limits, limits, redis_clients, tasks
from realtime.cluster_limits import CONNS_PREFIX, ClusterLimits, window
from realtime.process import get_process

CAP = 2


@pytest.fixture(params=["redis", "redis cluster"])
def redis_url(request: pytest.FixtureRequest, redis_proc: Any) -> Iterator[str]:
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    if request.param == "redis cluster":
        url = request.getfixturevalue("redis_cluster_url")
    # What these tests count is Redis' answers, not its speed: a call that outlived the
    # production bound (0.3 s; a Cluster client's first call also maps the slots) on a busy
    # machine would be a timeout, and the process would fall back to its own limits (in a
    # clean-clone CI run, the Cluster case of the three-process lease test let 45 of 45 by).
    with override_settings(REDIS_URL=url, MAX_CONNECTIONS_PER_USER=CAP, LIMITS_REDIS_TIMEOUT=5.0):
        cluster_limits.reset_cluster_limits()
        yield url
    cluster_limits.reset_cluster_limits()


@pytest.fixture
def unreachable() -> Iterator[str]:
    """A Redis URL nothing answers at: a loopback port nobody listens on."""
    with override_settings(
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", MAX_CONNECTIONS_PER_USER=CAP
    ):
        cluster_limits.reset_cluster_limits()
        yield "unreachable"
    cluster_limits.reset_cluster_limits()


@pytest.fixture
async def processes(redis_url: str) -> AsyncIterator[tuple[ClusterLimits, ClusterLimits]]:
    pair = ClusterLimits(), ClusterLimits()
    yield pair
    for process in pair:
        await process.aclose()


@pytest.fixture
async def server(redis_url: str) -> AsyncIterator[redis_clients.AsyncRedis]:
    client = redis_clients.async_client(redis_url)
    yield client
    await client.aclose()


def a_user() -> str:
    return f"unit-{uuid.uuid4().hex[:8]}"  # no other test's sockets share its key


async def settled(process: ClusterLimits) -> None:
    """Until the removals the process scheduled are done (kept with its other tasks)."""
    releases = [t for t in tasks.running() if t.get_name() == "connection cap release"]
    await asyncio.gather(*releases)


def test_a_token_bucket_becomes_a_moving_window_of_whole_seconds() -> None:
    assert (window(20, 60).amount, window(20, 60).get_expiry()) == (60, 3)
    # 2.5 s rounds up: the same burst, a sustained rate no higher than configured.
    assert (window(4, 10).amount, window(4, 10).get_expiry()) == (10, 3)


async def test_the_cap_counts_sockets_of_every_process(
    processes: tuple[ClusterLimits, ClusterLimits], server: aioredis.Redis
) -> None:
    a, b = processes
    user = a_user()
    assert await a.seat(user) is True
    assert await b.seat(user) is True
    assert await a.seat(user) is False
    assert await b.seat(user) is False
    b.release(user)
    await settled(b)
    assert await a.seat(user) is True


async def test_the_key_goes_with_the_users_last_socket(
    processes: tuple[ClusterLimits, ClusterLimits], server: aioredis.Redis
) -> None:
    a, b = processes
    user = a_user()
    await a.seat(user)
    await b.seat(user)
    await a.refresh()
    a.release(user)
    b.release(user)
    await settled(a)
    await settled(b)
    assert await server.exists(CONNS_PREFIX + user) == 0


async def test_a_refresh_brings_back_sockets_a_restarted_redis_forgot(
    processes: tuple[ClusterLimits, ClusterLimits], server: aioredis.Redis
) -> None:
    a, _ = processes
    user = a_user()
    await a.seat(user)
    await a.seat(user)
    await server.delete(CONNS_PREFIX + user)  # what a restart without persistence does
    await a.refresh()
    assert await server.zcard(CONNS_PREFIX + user) == CAP


async def test_the_budget_is_shared_by_every_process(
    processes: tuple[ClusterLimits, ClusterLimits],
) -> None:
    a, b = processes
    user = a_user()
    answers = [await p.hit("publish", user, 0.1, 3) for p in (a, b, a, b, a)]
    assert answers == [True, True, True, False, False]


@pytest.fixture
def hung() -> Iterator[str]:
    """A Redis URL of a server that takes connections and never answers (a frozen Redis)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes handshakes; nobody reads or writes
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        with override_settings(REDIS_URL=url, MAX_CONNECTIONS_PER_USER=CAP):
            yield url


async def test_a_redis_that_does_not_answer_costs_one_timeout_per_retry_period(hung: str) -> None:
    process = ClusterLimits()
    try:
        started = time.monotonic()
        assert await process.seat(a_user()) is None
        first = time.monotonic() - started
        assert await process.hit("publish", a_user(), 1, 1) is None
        both = time.monotonic() - started
        assert process.timeout <= first < process.timeout + 0.5, first
        assert both - first < 0.05, "the second call waited on Redis again"
    finally:
        await process.aclose()


@override_settings(USER_PUBLISH_RATE=0.1, USER_PUBLISH_BURST=2.0)
async def test_without_redis_the_per_user_limits_are_the_processs_own(unreachable: str) -> None:
    user = a_user()
    states = [await limits.connect(user) for _ in range(CAP + 1)]
    assert states[-1] is None  # the cap, on this process's count
    state = states[0]
    assert state is not None
    assert [await state.allow_publish() for _ in range(3)] == [True, True, False]
    for _ in range(CAP):
        limits.disconnect(user)
    assert user not in get_process().users
    shared = cluster_limits.get_cluster_limits()
    assert shared is not None
    await settled(shared)
    await shared.aclose()


@override_settings(USER_PUBLISH_RATE=0.01, USER_PUBLISH_BURST=100.0, USER_BUDGET_LEASE=0.1)
async def test_publishes_spend_a_lease_and_redis_counts_whole_leases(redis_url: str) -> None:
    """25 publishes take three leases of 10: Redis counts 30 taken, in three round trips."""
    user = a_user()
    state = limits.UserState(user)
    assert [await state.allow_publish() for _ in range(25)] == [True] * 25
    shared = cluster_limits.get_cluster_limits()
    assert shared is not None
    item = window(0.01, 100.0)
    stats = await shared.limiter.get_window_stats(item, "publish", user)
    assert stats.remaining == 70
    await shared.aclose()


@override_settings(USER_PUBLISH_RATE=10.0, USER_PUBLISH_BURST=10.0, USER_BUDGET_LEASE=0.5)
async def test_a_lease_is_kept_past_its_window_until_it_is_spent(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows of 1 s and leases of 5: one publish, an hour later four more, one lease."""
    user = a_user()
    state = limits.UserState(user)
    assert await state.allow_publish()
    shared = cluster_limits.get_cluster_limits()
    assert shared is not None
    later = time.monotonic() + 3600
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert [await state.allow_publish() for _ in range(4)] == [True] * 4
    stats = await shared.limiter.get_window_stats(window(10.0, 10.0), "publish", user)
    assert stats.remaining == 5  # Redis was asked once (a real hour has not passed)
    await shared.aclose()


@override_settings(USER_PUBLISH_RATE=0.01, USER_PUBLISH_BURST=20.0, USER_BUDGET_LEASE=0.3)
async def test_leases_on_several_processes_never_pass_the_burst(redis_url: str) -> None:
    """Three processes' states of one user, publishing in turn: 20 in all, whoever leased."""
    user = a_user()
    processes = [limits.UserState(user) for _ in range(3)]
    answers = [await processes[n % 3].allow_publish() for n in range(45)]
    assert answers.count(True) == 20
    assert not any(answers[-6:])  # at the end nobody has anything left
    shared = cluster_limits.get_cluster_limits()
    assert shared is not None
    await shared.aclose()
