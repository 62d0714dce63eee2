"""/metrics after real activity: a websocket publish through the app, HTTP requests, tasks.

Metrics are process-wide and cumulative, so each test reads them before and after and
checks the difference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from celery import Celery  # type: ignore[import-untyped]  # Celery ships no type information
from django.conf import settings
from django.test import AsyncClient, Client
from prometheus_client.parser import text_string_to_metric_families

from cluster.procs import free_port
from project.celery import app as celery_app
from realtime.consumers import CLOSE_TRY_AGAIN_LATER
from realtime.process import get_process
from tests.test_consumers import connect, open_socket, token_headers
from web.models import Room
from web.tasks import purge_idempotency_keys

REPO = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: Client | None = None) -> Samples:
    response = (client or Client()).get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


async def ascrape() -> Samples:
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 200, response.content
    return parse(response.content.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_publish_shows_in_the_metrics(general: Room, alice: Any) -> None:
    before = await ascrape()
    socket = await open_socket("alice")
    try:
        during = await ascrape()
        assert value(during, "chat_ws_connections") == value(before, "chat_ws_connections") + 1
        assert value(during, "chat_ws_connections_limit") == 15000
        await socket.send({"type": "subscribe", "ref": "s", "room": "general", "since": 0})
        await socket.until("subscribed")
        frame = {"type": "publish", "ref": "p", "room": "general", "body": "hi"}
        await socket.send({**frame, "client_msg_id": "m1"})
        assert {(await socket.recv())["type"], (await socket.recv())["type"]} == {"ack", "message"}
        await socket.send({"type": "nonsense"})
        assert (await socket.recv())["type"] == "error"
    finally:
        await socket.comm.disconnect()
    after = await ascrape()

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("chat_ws_frames_received_total", type="subscribe") == 1
    assert grew("chat_ws_frames_received_total", type="publish") == 1
    assert grew("chat_ws_frames_received_total", type="invalid") == 1
    assert grew("chat_messages_stored_total") == 1
    # subscribed, presence, ack and error by the consumer; the message by the fan-out.
    assert grew("chat_ws_frames_sent_total") >= 5
    # The message went through the fan-out once: one latency observation, under a second here.
    assert grew("chat_fanout_latency_seconds_count") == 1
    assert grew("chat_fanout_latency_seconds_bucket", le="1.0") == 1
    # Stored in a batch of its own, within a second.
    assert grew("chat_publish_batch_size_count") == 1
    assert grew("chat_publish_batch_size_bucket", le="1.0") == 1
    assert grew("chat_publish_batch_seconds_bucket", le="1.0") == 1
    assert value(after, "chat_ws_connections") == value(before, "chat_ws_connections")


def test_an_http_request_shows_under_its_route_with_its_status_and_queries(
    general: Room, alice: Any
) -> None:
    client = Client(headers={"authorization": token_headers("alice")[0][1].decode()})
    route = "api/rooms/<slug:slug>/messages"
    before = scrape()
    assert client.get("/api/rooms/general/messages").status_code == 200
    assert client.get("/api/rooms/nowhere/messages").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": route, "method": "GET", "status": "200"}
    assert grew("chat_http_request_duration_seconds_count", **ok) == 1
    assert grew("chat_http_request_duration_seconds_count", **{**ok, "status": "404"}) == 1
    # A path no pattern matches is not a series of its own.
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert grew("chat_http_request_duration_seconds_count", **unmatched) == 1
    assert grew("chat_db_queries_per_request_count", route=route) == 2
    # The token, the room, the messages: each request queried the database.
    assert grew("chat_db_queries_per_request_sum", route=route) >= 4
    assert grew("chat_db_queries_per_request_bucket", route=route, le="0.0") == 0


@pytest.mark.django_db(transaction=True)
async def test_async_views_queries_are_counted_too(general: Room, alice: Any) -> None:
    """Async views query from sync_to_async threads, not the middleware's."""
    token = (await sync_to_async(token_headers)("alice"))[0][1].decode()
    route = "api/rooms/<slug:slug>/messages"
    before = await ascrape()
    response = await AsyncClient().get(
        "/api/rooms/general/messages", headers={"authorization": token}
    )
    assert response.status_code == 200
    after = await ascrape()
    assert (
        value(after, "chat_db_queries_per_request_count", route=route)
        - value(before, "chat_db_queries_per_request_count", route=route)
        == 1
    )
    assert (
        value(after, "chat_db_queries_per_request_sum", route=route)
        - value(before, "chat_db_queries_per_request_sum", route=route)
        >= 2
    )


def test_metrics_ask_for_the_token_when_one_is_set(db: None, settings: Any) -> None:
    settings.METRICS_TOKEN = "scrape-secret"
    assert Client().get("/metrics").status_code == 401
    wrong = Client(headers={"authorization": "Bearer nope"})
    assert wrong.get("/metrics").status_code == 401
    right = Client(headers={"authorization": "Bearer scrape-secret"})
    assert right.get("/metrics").status_code == 200
    assert Client().post("/metrics").status_code in (403, 405)  # never a 500


@pytest.mark.django_db(transaction=True)
async def test_past_max_connections_per_process_a_socket_is_closed_1013(
    alice: Any, settings: Any
) -> None:
    # Room for one more socket than this process holds now.
    settings.MAX_CONNECTIONS_PER_PROCESS = len(get_process().sockets) + 1
    before = await ascrape()
    first = await open_socket("alice")
    try:
        second, (connected, _) = await connect(await sync_to_async(token_headers)("alice"))
        assert connected  # accepted only to say why
        closed = await second.receive_output(timeout=3)
        assert closed == {"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER}
        await second.disconnect()
        after = await ascrape()
        refused = {"kind": "process_connections"}
        assert value(after, "chat_rate_limited_total", **refused) == (
            value(before, "chat_rate_limited_total", **refused) + 1
        )
    finally:
        await first.comm.disconnect()
    third = await open_socket("alice")  # room again once the first is gone
    await third.comm.disconnect()


@celery_app.task(name="tests.test_metrics.fails")  # type: ignore[untyped-decorator]  # untyped
def fails() -> None:
    raise RuntimeError("a task that fails")


def test_celery_task_outcomes_are_counted(db: None) -> None:
    task = "web.tasks.purge_idempotency_keys"
    before = scrape()
    purge_idempotency_keys.delay()  # eager in tests: no broker
    fails.delay()
    after = scrape()
    for name, outcome in [(task, "success"), ("tests.test_metrics.fails", "failure")]:
        labels = {"task": name, "outcome": outcome}
        assert value(after, "chat_celery_tasks_total", **labels) == (
            value(before, "chat_celery_tasks_total", **labels) + 1
        )


# Two processes (uvicorn --workers, Celery's prefork children) counting into one folder.
WRITER = """
import os, sys
from project import metrics
metrics.MESSAGES_STORED.inc(int(sys.argv[1]))
metrics.WS_CONNECTIONS.set(int(sys.argv[1]))
metrics.WS_FRAMES_RECEIVED.labels("publish").inc()
print(os.getpid())
"""


def test_multiprocess_mode_adds_up_the_processes(
    db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", WRITER, str(n)],
                cwd=REPO,
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        )
        for n in (2, 3)
    ]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    samples = scrape()
    assert value(samples, "chat_messages_stored_total") == 5
    assert value(samples, "chat_ws_frames_received_total", type="publish") == 2
    assert value(samples, "chat_ws_connections") == 5  # the live processes' sum
    from project import metrics

    metrics.process_exited(pids[0])  # its sockets are gone; what it counted stays
    samples = scrape()
    assert value(samples, "chat_ws_connections") == 3
    assert value(samples, "chat_messages_stored_total") == 5


@pytest.fixture
def worker_port(
    postgresql_proc: Any, redis_proc: Any, db: None, tmp_path: Path
) -> Iterator[tuple[int, str]]:
    """A real `celery worker` (prefork, two children) serving its metrics; its broker URL."""
    port = free_port()
    broker = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    database = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/"
        f"{database['NAME']}",
        "CELERY_BROKER_URL": broker,
        "CELERY_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "SECRET_KEY": "test-only",
    }
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "celery"),
            *("-A", "project", "worker", "--pool=prefork", "--concurrency=2", "-l", "info"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port, broker
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


@pytest.mark.e2e
def test_the_celery_worker_serves_its_childrens_task_counts(worker_port: tuple[int, str]) -> None:
    port, broker = worker_port
    client = Celery(broker=broker)
    for _ in range(4):
        client.send_task("web.tasks.purge_idempotency_keys")
    labels = {"task": "web.tasks.purge_idempotency_keys", "outcome": "success"}
    deadline, seen = time.monotonic() + 30, 0.0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                seen = value(parse(answer.read().decode()), "chat_celery_tasks_total", **labels)
        except OSError:
            pass  # not listening yet
        if seen == 4:
            break
        time.sleep(0.2)  # polling a process that offers no event; bounded by the deadline
    client.close()
    assert seen == 4
