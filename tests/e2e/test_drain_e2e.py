"""A pod sent SIGTERM drains (realtime/drain.py): real uvicorn pods, real clients.

Clients on both pods publish all along; one pod gets SIGTERM with a short
DRAIN_SECONDS. It must turn not-ready at once, refuse new sockets, close its own
with 1012 one after another over the window, and exit; its clients come back on
the other pod with `since` and end with every message exactly once, in order,
and no publish of theirs is stored without its answer.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.faults import (
    RECONNECT_WITHIN,
    Ledger,
    ReturningClient,
    answer_or_none,
    client_factory,
)
from tests.e2e.http_client import Http, history, last_seq
from tests.e2e.servers import Pod, SpawnPod, Stack
from tests.e2e.wsclient import ServerError, WsClient, publish_frame

pytestmark = pytest.mark.e2e

DRAIN_SECONDS = 3.0
EXIT_MARGIN = 3.0  # uvicorn's own shutdown after the drain: the lifespan, the Redis feed
PER_SOCKET = 60
PACE = 0.08  # seconds between one client's publishes: they run before, during and after
NOT_READY_WITHIN = 0.5


class DrainedClient(ReturningClient):
    """A ReturningClient that notes, before it reconnects, the room's last seq (the floor).

    A publish that got no answer on a closed connection and is sent again after that
    must be stored above the floor: stored by the retry, not half-done by the pod that
    closed (which could only have stored it before its close, so at or below the floor).
    """

    def __init__(self, *args: Any, survivor: Http, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.survivor = survivor
        self.floor = 0
        self.unanswered: set[str] = set()
        self.must_be_above: dict[str, int] = {}  # client_msg_id -> floor when it was resent
        self.first_closed_at: float | None = None

    async def connection(self, *, within: float = RECONNECT_WITHIN) -> WsClient:
        if self.conns and self.conns[-1].closed.is_set():
            self.floor = await last_seq(self.survivor, self.room)
        return await super().connection(within=within)

    def watch_first_close(self) -> asyncio.Task[None]:
        conn = self.conns[0]

        async def watch() -> None:
            await conn.closed.wait()
            self.first_closed_at = time.monotonic()

        return asyncio.ensure_future(watch())

    async def publish_paced(self, count: int, ledger: Ledger) -> None:
        """Publish one message every PACE seconds, two in flight, resending the unanswered."""
        todo = [(f"{self.name}.{i}", f"{self.name} says {i}") for i in range(count)]
        while todo:
            conn = await self.connection()
            batch = todo[:2]
            refs = []
            for client_msg_id, body in batch:
                if client_msg_id in self.unanswered:
                    self.unanswered.discard(client_msg_id)
                    self.must_be_above[client_msg_id] = self.floor
                frame = {"ref": conn.new_ref(), **publish_frame(self.room, body, client_msg_id)}
                try:
                    await conn.send(frame)
                except ConnectionClosed:
                    break
                refs.append(frame["ref"])
            answered = 0
            for ref in refs:
                answer = await answer_or_none(conn, ref)
                if answer is None:
                    break
                if answer["type"] != "ack":
                    raise ServerError(answer)
                client_msg_id, _ = todo.pop(0)
                ledger.acked(self.name, self.room, client_msg_id, answer["seq"])
                answered += 1
            missed = batch[answered:]  # sent without an answer, or not sent: both again
            self.resent += len(missed)
            self.unanswered.update(cmid for cmid, _ in missed)
            # A person typing, not a flood: the publishing spans the whole drain.
            await asyncio.sleep(PACE)


@pytest.fixture
async def drained_clients() -> AsyncIterator[Callable[..., DrainedClient]]:
    async with client_factory(DrainedClient) as make:
        yield make


async def poll_not_ready(pod: Pod, *, within: float) -> dict[str, Any]:
    """Poll /readyz until it answers 503; its body."""
    probe = Http(pod.url)
    async with asyncio.timeout(within):
        while True:
            answer = await probe.get("/readyz", timeout=2.0)
            if answer.status == 503:
                body: dict[str, Any] = answer.json()
                return body
            assert answer.status == 200, answer.text
            await asyncio.sleep(0.02)  # a probe polls; nothing announces the change


async def test_a_drained_pod_hands_its_clients_over_one_after_another_and_loses_nothing(
    stack: Stack,
    spawn_pod: SpawnPod,
    drained_clients: Callable[..., DrainedClient],
    room: str,
) -> None:
    doomed = spawn_pod("pod-draining", {"DRAIN_SECONDS": str(DRAIN_SECONDS)})
    survivor = spawn_pod("pod-staying")
    assert doomed.proc is not None
    ready = await Http(doomed.url).get("/readyz")
    assert ready.status == 200, ready.text
    survivor_api = Http(survivor.url, token=stack.tokens["alice"])
    ledger = Ledger()
    clients = [
        drained_clients(
            f"{user}{n}-on-{home.name}",
            stack.tokens[user],
            [home, other],
            room,
            survivor=survivor_api,
        )
        for home, other in ((doomed, survivor), (survivor, doomed))
        for user in ("alice", "bob", "charlie")
        for n in (1, 2)
    ]
    for client in clients:
        await client.connection()
    on_doomed = clients[:6]
    watchers = [client.watch_first_close() for client in on_doomed]

    async with asyncio.TaskGroup() as group:
        for client in clients:
            group.create_task(client.publish_paced(PER_SOCKET, ledger))
        await ledger.wait_for_acks(len(clients) * PER_SOCKET // 5)  # publishing, all of them
        sigterm_at = time.monotonic()
        doomed.proc.send_signal(signal.SIGTERM)
        # Not ready at once, saying why; new sockets turned away.
        body = await poll_not_ready(doomed, within=NOT_READY_WITHIN)
        assert (body["ready"], body["draining"]) == (False, True), body
        with pytest.raises(InvalidStatus) as refused:
            await WsClient.connect(doomed.ws_url, token=stack.tokens["alice"], within=2.0)
        assert refused.value.response.status_code == 503
        # And gone within the window plus uvicorn's shutdown.
        code = await asyncio.to_thread(doomed.proc.wait, DRAIN_SECONDS + EXIT_MARGIN + 5)
        exited_after = time.monotonic() - sigterm_at
    await asyncio.gather(*watchers)

    total = len(clients) * PER_SOCKET
    for client in clients:
        await client.wait_for_seq(total)
    stored = await history(survivor_api, room)
    assert len(stored) == total
    for client in clients:
        ledger.delivered(client.name, room, client.frames, first=1)
    ledger.check(room, stored)

    # Each of the drained pod's clients was closed once, with 1012; the others never. Read on
    # the first connection: a client done publishing before its close never reconnects, so
    # its close_codes may not have recorded it.
    assert [c.conns[0].close_code for c in on_doomed] == [1012] * 6
    assert all(c.close_codes in ([], [1012]) for c in on_doomed)
    assert [c.close_codes for c in clients[6:]] == [[]] * 6
    # Closed one after another over the window, none before the SIGTERM.
    closes = sorted(c.first_closed_at for c in on_doomed if c.first_closed_at is not None)
    assert len(closes) == 6
    assert closes[0] >= sigterm_at
    assert closes[-1] - closes[0] >= 0.4 * DRAIN_SECONDS, [t - sigterm_at for t in closes]
    # Nothing half-done: whatever was resent had not been stored by the drained pod.
    resent = {cmid: floor for c in on_doomed for cmid, floor in c.must_be_above.items()}
    for cmid, floor in resent.items():
        assert ledger.acks[(room, cmid)] > floor, f"{cmid} was stored before its retry"
    assert exited_after < DRAIN_SECONDS + EXIT_MARGIN, f"exited {exited_after:.1f}s after SIGTERM"
    print(
        f"drain: exit code {code} after {exited_after:.2f}s; closes at "
        f"{[round(t - sigterm_at, 2) for t in closes]}s; {len(resent)} publishes resent"
    )
