"""/readyz against real servers (a frozen or missing Redis, a frozen PostgreSQL), and the drain
in-process: new sockets refused, open ones closed with 1012 one after another, a publish in
hand answered before its socket closes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from prometheus_client import REGISTRY
from pytest_redis.executor import RedisExecutor

from bench.redis_cluster import RedisCluster
from cluster.procs import free_port
from project import metrics
from realtime import drain
from realtime.process import close_process, get_process
from tests.e2e.faults import redis_server, redis_url
from tests.e2e.processes import frozen, postgres_pids
from tests.test_consumers import connect, open_socket, token_headers
from web.models import Message, Room

BOUND = 2.0  # /readyz answers within this whatever hangs


@pytest.fixture(autouse=True)
async def fresh_process() -> AsyncIterator[None]:
    """Each test starts with a process that is not draining, and leaves none behind."""
    await close_process()
    yield
    await close_process()
    metrics.DRAINING.set(0)


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.fixture
def with_redis(settings: Any, redis_proc: Any) -> None:
    settings.REDIS_URL = f"redis://{redis_proc.host}:{redis_proc.port}/0"


@pytest.fixture
def own_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisExecutor]:
    with redis_server(request, tmp_path_factory) as server:
        yield server


async def readyz(client: AsyncClient) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = await client.get("/readyz")
    return response.status_code, response.json(), time.monotonic() - started


@pytest.mark.django_db
async def test_readyz_is_200_when_postgres_and_redis_answer(
    async_client: AsyncClient, with_redis: None
) -> None:
    status, body, _ = await readyz(async_client)
    assert (status, body) == (
        200,
        {"ready": True, "postgres": "ok", "redis": "ok", "draining": False},
    )
    assert gauge("chat_dependency_up", service="postgres") == 1
    assert gauge("chat_dependency_up", service="redis") == 1


@pytest.mark.django_db
async def test_readyz_is_503_naming_redis_when_redis_is_down(
    async_client: AsyncClient, settings: Any
) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    status, body, took = await readyz(async_client)
    assert (status, body) == (
        503,
        {"ready": False, "postgres": "ok", "redis": "unavailable", "draining": False},
    )
    assert took < BOUND
    assert gauge("chat_dependency_up", service="redis") == 0


@pytest.mark.django_db
async def test_readyz_answers_within_the_bound_when_redis_hangs(
    async_client: AsyncClient, settings: Any, own_redis: RedisExecutor
) -> None:
    settings.REDIS_URL = redis_url(own_redis)
    assert (await readyz(async_client))[0] == 200  # its connection is made and kept
    assert own_redis.process is not None
    with frozen([own_redis.process.pid]):
        status, body, took = await readyz(async_client)
    assert (status, body["redis"], body["postgres"]) == (503, "unavailable", "ok")
    assert took < BOUND
    assert (await readyz(async_client))[0] == 200  # and it comes back by itself


@pytest.mark.django_db
async def test_on_a_cluster_one_master_down_keeps_readyz_200_and_all_down_is_503(
    async_client: AsyncClient, settings: Any
) -> None:
    """A shard down stalls its rooms only (messages are stored all the same): the pods stay
    ready. With no master answering, they are not."""
    with RedisCluster(masters=3) as cluster:
        settings.REDIS_URL = f"redis+cluster://{cluster.seeds}"
        assert (await readyz(async_client))[:2] == (
            200,
            {"ready": True, "postgres": "ok", "redis": "ok", "draining": False},
        )
        first, *others = cluster.master_ports()
        cluster.kill(first)
        for _ in range(5):  # each time, not once the client happens to have let go of it
            status, body, took = await readyz(async_client)
            assert (status, body["redis"]) == (200, "ok")
        for port in others:
            cluster.kill(port)
        status, body, took = await readyz(async_client)
        assert (status, body["redis"]) == (503, "unavailable")
        assert took < BOUND


@pytest.mark.django_db
async def test_readyz_answers_within_the_bound_when_postgres_hangs(
    async_client: AsyncClient, postgresql_proc: Any
) -> None:
    assert (await readyz(async_client))[0] == 200
    with frozen(postgres_pids(postgresql_proc)):
        status, body, took = await readyz(async_client)
    assert (status, body["postgres"], body["redis"]) == (503, "unavailable", "not configured")
    assert took < BOUND
    assert gauge("chat_dependency_up", service="postgres") == 0
    assert (await readyz(async_client))[0] == 200


@pytest.mark.django_db
async def test_readyz_is_503_as_soon_as_the_process_drains(async_client: AsyncClient) -> None:
    drain.start()
    status, body, _ = await readyz(async_client)
    assert (status, body) == (
        503,
        {"ready": False, "postgres": "ok", "redis": "not configured", "draining": True},
    )
    assert gauge("chat_draining") == 1


# The drain, in-process (Channels' communicator, in-memory layer).


async def close_code(communicator: Any, within: float = 3.0) -> int:
    """Read the socket's output up to its close; the close code."""
    while True:
        output = await communicator.receive_output(timeout=within)
        if output["type"] == "websocket.close":
            code: int = output["code"]
            return code


@pytest.mark.django_db(transaction=True)
async def test_a_draining_process_closes_its_sockets_with_1012_one_after_another(
    alice: Any,
) -> None:
    sockets = [await open_socket("alice") for _ in range(3)]
    closed_at: list[float] = []

    async def watch(socket: Any) -> int:
        code = await close_code(socket.comm)
        closed_at.append(time.monotonic())
        return code

    watchers = [asyncio.ensure_future(watch(s)) for s in sockets]
    window = 0.9
    started = time.monotonic()
    await drain.close_spread(window)
    assert await asyncio.gather(*watchers) == [1012, 1012, 1012]
    # At 0, w/3 and 2w/3 after the drain began: spread, not all at once, and within the window.
    gaps = [b - a for a, b in zip([started, *closed_at], closed_at, strict=False)]
    assert gaps[0] < 0.15, gaps
    assert all(0.2 < gap < 0.45 for gap in gaps[1:]), gaps
    assert not get_process().sockets
    for socket in sockets:
        await socket.comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_draining_process_refuses_new_sockets(alice: Any) -> None:
    drain.start()
    headers = await sync_to_async(token_headers)("alice")
    _communicator, (connected, _) = await connect(headers)
    assert not connected  # over uvicorn an HTTP 503 (tests/e2e/test_drain_e2e.py)


@pytest.mark.django_db(transaction=True)
async def test_a_publish_in_hand_is_acked_before_its_socket_closes(
    alice: Any, general: Room
) -> None:
    socket = await open_socket("alice")
    (consumer,) = get_process().sockets
    await socket.send({"type": "ping", "ref": "p"})
    assert (await socket.recv())["type"] == "pong"  # connect is over: not busy with that
    await socket.send({"type": "publish", "room": "general", "body": "hi", "client_msg_id": "m1"})
    for _ in range(1000):  # until the consumer has the frame in hand (storing it)
        if consumer.busy:
            break
        await asyncio.sleep(0.001)
    assert consumer.busy
    await drain.close_spread(1.0)
    ack = orjson.loads(await socket.comm.receive_from(timeout=3))
    assert (ack["type"], ack["client_msg_id"]) == ("ack", "m1")
    assert await close_code(socket.comm) == 1012
    assert await Message.objects.filter(client_msg_id="m1").acount() == 1
    await socket.comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_publish_after_the_close_is_neither_stored_nor_answered(
    alice: Any, general: Room
) -> None:
    socket = await open_socket("alice")
    await drain.close_spread(1.0)
    await socket.send({"type": "publish", "room": "general", "body": "hi", "client_msg_id": "m2"})
    assert await close_code(socket.comm) == 1012
    assert await socket.comm.receive_nothing(timeout=0.3)
    assert not await Message.objects.filter(client_msg_id="m2").aexists()
    await socket.comm.disconnect()
