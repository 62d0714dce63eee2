"""What the service promises when PostgreSQL breaks (docs/guarantees.md), with the server
really stopped or frozen: a PostgreSQL server of this module's own, never the session's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_postgresql import factories as pg_factories

from tests.e2e.faults import build_stack, redis_server, redis_url
from tests.e2e.http_client import Http, create_room_sync, history
from tests.e2e.processes import frozen, postgres_pids
from tests.e2e.servers import Pod, Stack
from tests.e2e.wsclient import Frame, WsClient, check_room_delivery, publish_frame

pytestmark = pytest.mark.e2e


# A PostgreSQL server of this module's own, for the test that stops it.
fault_postgresql_proc = pg_factories.postgresql_proc(
    port=None, executable=str(Path(__file__).parents[1] / "bin" / "pg_ctl")
)


UNAVAILABLE_WITHIN = 15.0  # connect, statement and pool timeouts are 5 s each (settings)
DATABASE_BACK_WITHIN = 30.0


@pytest.fixture(scope="module")
def pg_stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fault_postgresql_proc: Any,
    stack: Stack,
) -> Iterator[Stack]:
    """A stack on a PostgreSQL server of this module's own, with a Redis of its own."""
    with redis_server(request, tmp_path_factory) as server:
        yield build_stack(fault_postgresql_proc, redis_url(server), stack.log_dir)


@pytest.fixture
def pg_pod(pg_stack: Stack) -> Iterator[Pod]:
    pod = pg_stack.start_pod("pod-pg")
    yield pod
    pod.stop()


async def test_a_stopped_database_answers_unavailable_in_bounded_time_and_a_retry_is_stored_once(
    fault_postgresql_proc: Any, pg_stack: Stack, pg_pod: Pod
) -> None:
    owner = Http(pg_pod.url, token=pg_stack.tokens["alice"])
    room = create_room_sync(owner)
    reader = await WsClient.connect(pg_pod.ws_url, token=pg_stack.tokens["alice"], name="reader")
    writer = await WsClient.connect(pg_pod.ws_url, token=pg_stack.tokens["bob"], name="writer")
    try:
        await reader.subscribe(room, since=0)
        first = await writer.publish(room, "before", "pg-1")
        await reader.wait_for_seq(room, first["seq"])

        await asyncio.to_thread(fault_postgresql_proc.stop)
        await publish_refused_as_unavailable(writer, room, "during", "pg-2")
        # The connections stay open and answer; the HTTP API says 503; nothing crashed.
        await writer.ping()
        await reader.ping()
        listed = await owner.get("/api/rooms", timeout=UNAVAILABLE_WITHIN + 5)
        assert listed.status == 503, listed.text
        assert listed.json()["error"]["code"] == "unavailable"
        pg_pod.assert_alive()

        await asyncio.to_thread(fault_postgresql_proc.start)
        acked = await retry_until_stored(writer, room, "during", "pg-2")
        again = await writer.publish(room, "during", "pg-2")
        assert acked["seq"] == again["seq"] == first["seq"] + 1
        await reader.wait_for_seq(room, acked["seq"])
        await reader.ping()

        stored = await history(owner, room)
        assert [(m["seq"], m["client_msg_id"]) for m in stored] == [(1, "pg-1"), (2, "pg-2")]
        check_room_delivery(reader.frames, room, 1, 2)
    finally:
        await reader.close()
        await writer.close()


async def publish_refused_as_unavailable(
    writer: WsClient, room: str, body: str, client_msg_id: str
) -> None:
    """Publish while the store is down: an `unavailable` error within the bound."""
    try:
        refused = await writer.request(
            publish_frame(room, body, client_msg_id), within=UNAVAILABLE_WITHIN
        )
    except TimeoutError:
        pytest.fail(f"a publish got no answer within {UNAVAILABLE_WITHIN:.0f}s: it hangs")
    assert (refused["type"], refused.get("code")) == ("error", "unavailable"), refused


async def retry_until_stored(writer: WsClient, room: str, body: str, client_msg_id: str) -> Frame:
    """Publish again, same client_msg_id, until the store is back; the ack."""
    async with asyncio.timeout(DATABASE_BACK_WITHIN):
        while True:
            answer = await writer.request(
                publish_frame(room, body, client_msg_id), within=UNAVAILABLE_WITHIN + 5
            )
            if answer["type"] == "ack":
                return answer
            assert answer.get("code") == "unavailable", answer
            # A client backs off between retries; no event says the database is back.
            await asyncio.sleep(0.5)


async def test_a_frozen_database_answers_unavailable_in_bounded_time_and_a_retry_is_stored_once(
    fault_postgresql_proc: Any, pg_stack: Stack, pg_pod: Pod
) -> None:
    owner = Http(pg_pod.url, token=pg_stack.tokens["alice"])
    room = create_room_sync(owner)
    writer = await WsClient.connect(pg_pod.ws_url, token=pg_stack.tokens["bob"], name="writer")
    try:
        first = await writer.publish(room, "before", "frozen-1")
        with frozen(postgres_pids(fault_postgresql_proc)):
            await publish_refused_as_unavailable(writer, room, "during", "frozen-2")
            await writer.ping()
        acked = await retry_until_stored(writer, room, "during", "frozen-2")
        assert acked["seq"] == first["seq"] + 1
        stored = await history(owner, room)
        assert [m["client_msg_id"] for m in stored] == ["frozen-1", "frozen-2"]
    finally:
        await writer.close()
