"""Fixtures for the end-to-end tests: the stack, two pods, users' clients and fresh rooms.

Alice owns the rooms; Bob is a second user; Charlie belongs to nothing, so he
should have no access to Alice's private rooms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pytest_redis.executor import RedisExecutor

from cluster.procs import FORBIDDEN_PORTS
from tests.e2e.faults import ReturningClient, client_factory, redis_server
from tests.e2e.http_client import Http, create_room_sync, login
from tests.e2e.servers import (
    Pod,
    SpawnPod,
    Stack,
    base_env,
    create_database,
    issue_tokens,
    manage,
    parse_demo_users,
)
from tests.e2e.wsclient import Sockets

DATABASE = "e2e"
# The tests publish thousands of messages in seconds, far past a person's flood limits;
# they raise them the way load tests do. A test of the limits starts its own pod without.
# A pod takes a user's budget from Redis in leases (USER_BUDGET_LEASE of the burst) and a
# lease not spent when the user's last socket there closes is not given back: at 0.1 of
# this burst, ten short-lived sockets of one user within a second spent it all, and the
# next publish was refused (two tests of test_realtime_e2e.py, once in a full run).
FAST_PUBLISHING = {
    "PUBLISH_RATE": "100000",
    "PUBLISH_BURST": "100000",
    "USER_PUBLISH_RATE": "100000",
    "USER_PUBLISH_BURST": "100000",
    "USER_BUDGET_LEASE": "0.001",
}


@pytest.fixture(scope="session")
def stack(postgresql_proc: Any, redis_proc: Any, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """A fresh, migrated database on the throwaway PostgreSQL, the throwaway Redis, and users."""
    pg_port, redis_port = int(postgresql_proc.port), int(redis_proc.port)
    assert pg_port not in FORBIDDEN_PORTS, "refusing the machine's own PostgreSQL"
    assert redis_port not in FORBIDDEN_PORTS, "refusing the machine's own Redis"
    pg_host, pg_user = postgresql_proc.host, postgresql_proc.user
    create_database(pg_host, pg_port, pg_user, postgresql_proc.password, DATABASE)
    env = base_env(
        {
            "DATABASE_URL": f"postgres://{pg_user}@{pg_host}:{pg_port}/{DATABASE}",
            "DATABASE_PASSWORD": postgresql_proc.password or "",
            "REDIS_URL": f"redis://{redis_proc.host}:{redis_port}/0",
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "SECRET_KEY": "e2e-not-a-secret-" + "x" * 40,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            **FAST_PUBLISHING,
        }
    )
    manage(env, "migrate", "--noinput")
    tokens = issue_tokens(env, ["alice", "bob", "charlie"])
    demo = parse_demo_users(manage(env, "demo_users"))
    assert set(demo) == {"alice", "bob"}, f"unexpected demo_users output: {demo}"
    log_dir = tmp_path_factory.mktemp("pods")
    return Stack(
        env=env,
        tokens=tokens,
        passwords={name: password for name, (password, _token) in demo.items()},
        log_dir=Path(log_dir),
    )


@pytest.fixture(scope="session")
def pods(stack: Stack) -> Iterator[tuple[Pod, Pod]]:
    """Two uvicorn processes over the same database and Redis, like two pods behind a balancer."""
    started: list[Pod] = []
    try:
        for name in ("pod-a", "pod-b"):
            started.append(stack.start_pod(name))
        yield started[0], started[1]
    finally:
        for pod in started:
            pod.stop()


@pytest.fixture(autouse=True)
def _pods_stay_up(pods: tuple[Pod, Pod]) -> Iterator[None]:
    """Fail with the pod's output if a shared pod died during the test."""
    yield
    for pod in pods:
        pod.assert_alive()


@pytest.fixture
def pod_a(pods: tuple[Pod, Pod]) -> Pod:
    return pods[0]


@pytest.fixture
def pod_b(pods: tuple[Pod, Pod]) -> Pod:
    return pods[1]


@pytest.fixture
def spawn_pod(stack: Stack) -> Iterator[SpawnPod]:
    """Start extra pods for one test (fault tests SIGKILL them); all are stopped afterwards."""
    started: list[Pod] = []

    def spawn(name: str, env: Mapping[str, str] | None = None) -> Pod:
        pod = stack.start_pod(name, env=env)
        started.append(pod)
        return pod

    yield spawn
    for pod in started:
        pod.stop()


@pytest.fixture
def alice_api(stack: Stack, pod_a: Pod) -> Http:
    return Http(pod_a.url, token=stack.tokens["alice"])


@pytest.fixture
def bob_api(stack: Stack, pod_a: Pod) -> Http:
    return Http(pod_a.url, token=stack.tokens["bob"])


@pytest.fixture
def charlie_api(stack: Stack, pod_a: Pod) -> Http:
    return Http(pod_a.url, token=stack.tokens["charlie"])


@pytest.fixture(scope="session")
def alice_session(stack: Stack, pods: tuple[Pod, Pod]) -> Http:
    """Alice logged in through /accounts/login/; her session works on every pod."""
    return login(pods[0].url, "alice", stack.passwords["alice"])


@pytest.fixture
def room(alice_api: Http) -> str:
    """A fresh public room owned by Alice."""
    return create_room_sync(alice_api)


@pytest.fixture
def private_room(alice_api: Http) -> str:
    """A fresh private room; Alice owns it and is its only member."""
    return create_room_sync(alice_api, private=True, prefix="secret")


@pytest.fixture
async def sockets(stack: Stack) -> AsyncIterator[Sockets]:
    """Websocket clients for the test, as named users; closed at its end."""
    opened = Sockets(stack.tokens)
    yield opened
    await opened.close_all()


@pytest.fixture
def own_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisExecutor]:
    """A Redis server for one test, which may stop and restart it on the same port."""
    with redis_server(request, tmp_path_factory) as server:
        yield server


@pytest.fixture
async def returning() -> AsyncIterator[Callable[..., ReturningClient]]:
    """Make ReturningClients for the test; their connections are closed at its end."""
    async with client_factory(ReturningClient) as make:
        yield make
