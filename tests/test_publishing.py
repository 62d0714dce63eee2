"""realtime/publishing.py: a socket's publishes are queued in the order sent and answered as
they are stored, while its later frames are read (over Channels' communicator, stored for
real)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import override_settings

from realtime import drain, publisher
from realtime.process import get_process
from tests.test_consumers import Socket, open_socket
from web import actions
from web.models import Message, Room

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def slow_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every batch the publisher stores, by size; each waits 0.2 s before it is stored (for
    real), so that what a socket sends meanwhile has to queue."""
    sizes: list[int] = []
    real = publisher.send_messages

    async def slow(batch: list[actions.Outgoing]) -> Any:
        sizes.append(len(batch))
        await asyncio.sleep(0.2)
        return await real(batch)

    monkeypatch.setattr(publisher, "send_messages", slow)
    return sizes


def frame(i: int) -> dict[str, Any]:
    return {
        "type": "publish",
        "ref": f"p{i}",
        "room": "general",
        "body": f"m{i}",
        "client_msg_id": f"c{i}",
    }


async def acks(socket: Socket, count: int) -> list[dict[str, Any]]:
    return [await socket.recv() for _ in range(count)]


async def test_a_sockets_publishes_share_batches_and_are_acked_in_order(
    general: Room, alice: Any, slow_batches: list[int]
) -> None:
    socket = await open_socket("alice")
    for i in range(20):
        await socket.send(frame(i))
    # A ping sent after them is answered while they are still being stored.
    await socket.send({"type": "ping", "ref": "ping"})
    assert await socket.recv() == {"type": "pong", "ref": "ping"}
    answered = await acks(socket, 20)
    assert [(a["type"], a["ref"], a["seq"]) for a in answered] == [
        ("ack", f"p{i}", i + 1) for i in range(20)
    ]
    # Read while the first were being stored: they share one or two transactions (a socket
    # that waited for each ack would have needed twenty).
    assert sum(slow_batches) == 20
    assert len(slow_batches) <= 2
    bodies = [m async for m in Message.objects.order_by("seq").values_list("body", flat=True)]
    assert bodies == [f"m{i}" for i in range(20)]
    await socket.comm.disconnect()


@override_settings(SOCKET_PUBLISHES_IN_FLIGHT=3)
async def test_a_socket_waits_once_it_has_enough_publishes_in_flight(
    general: Room, alice: Any, slow_batches: list[int]
) -> None:
    socket = await open_socket("alice")
    for i in range(8):
        await socket.send(frame(i))
    await asyncio.sleep(0.1)
    # Three read from the socket and being stored; the other five not read yet.
    assert slow_batches == [3]
    assert not get_process().publisher.waiting
    answered = await acks(socket, 8)
    assert [a["seq"] for a in answered] == list(range(1, 9))
    assert sum(slow_batches) == 8
    assert max(slow_batches) <= 3  # never more than three of the socket's in flight
    await socket.comm.disconnect()


async def test_the_drain_closes_a_socket_once_its_publishes_are_acked(
    general: Room, alice: Any, slow_batches: list[int]
) -> None:
    socket = await open_socket("alice")
    for i in range(5):
        await socket.send(frame(i))
    await asyncio.sleep(0.05)  # read and queued: the first batch is being stored
    closing = asyncio.ensure_future(drain.close_spread(0.1))
    answered = await acks(socket, 5)
    assert [a["seq"] for a in answered] == [1, 2, 3, 4, 5]
    output = await socket.comm.receive_output(timeout=3)
    assert output == {"type": "websocket.close", "code": 1012, "reason": output.get("reason")}
    await closing
    assert await Message.objects.acount() == 5
    await socket.comm.disconnect()


@override_settings(DATABASE_DEADLINE_SECONDS=0.1)
async def test_a_publish_not_stored_by_the_deadline_is_answered_unavailable(
    general: Room, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, sizes = publisher.send_messages, []

    async def first_one_slow(batch: list[actions.Outgoing]) -> Any:
        sizes.append(len(batch))
        if len(sizes) == 1:
            await asyncio.sleep(0.3)  # past the deadline
        return await real(batch)

    monkeypatch.setattr(publisher, "send_messages", first_one_slow)
    socket = await open_socket("alice")
    await socket.send(frame(0))
    refused = await socket.recv()
    assert (refused["type"], refused["code"], refused["ref"]) == ("error", "unavailable", "p0")
    await asyncio.sleep(0.4)  # the batch it was in is stored meanwhile
    await socket.send(frame(0))  # the retry the error asks for: the same message, once
    ack = await socket.recv()
    assert (ack["type"], ack["ref"], ack["seq"]) == ("ack", "p0", 1)
    assert sizes == [1, 1]
    assert await Message.objects.acount() == 1
    assert not socket.pending
    await socket.comm.disconnect()
