"""Publishes from one process are stored in batches per room, each with its own result."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from realtime import publisher
from web import actions
from web.access import aget_room_for_user
from web.errors import BadRequest
from web.models import Message, Room

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def lobby() -> Room:
    return Room.objects.create(slug="lobby", title="Lobby")


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch the publisher stores (still stored for real)."""
    sizes: list[int] = []
    real = publisher.send_messages

    async def counting(batch: list[actions.Outgoing]) -> Any:
        sizes.append(len(batch))
        return await real(batch)

    monkeypatch.setattr(publisher, "send_messages", counting)
    return sizes


async def test_concurrent_publishes_share_transactions_and_keep_arrival_order(
    lobby: Room, alice: Any, batches: list[int]
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    outgoing = [actions.Outgoing(alice, room, f"m{i}", f"c{i}") for i in range(60)]
    first = asyncio.ensure_future(publisher.publish(outgoing[0]))
    await asyncio.sleep(0)  # in flight: the others queue behind it
    sent = [await first, *await asyncio.gather(*(publisher.publish(o) for o in outgoing[1:]))]
    assert [s.message.seq for s in sent] == list(range(1, 61))
    assert [s.message.body for s in sent] == [f"m{i}" for i in range(60)]
    assert batches == [1, 59]
    stored = [
        row
        async for row in Message.objects.filter(room=room)
        .order_by("seq")
        .values_list("seq", "body")
    ]
    assert stored == [(i + 1, f"m{i}") for i in range(60)]
    assert not publisher._queues  # nothing kept once the room is quiet


async def test_a_refused_publish_does_not_refuse_its_batch(
    lobby: Room, alice: Any, bob: Any
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    bobs = await aget_room_for_user(bob, "lobby")
    results = await asyncio.gather(
        publisher.publish(actions.Outgoing(alice, room, "first", "a1")),
        publisher.publish(actions.Outgoing(bob, bobs, " ", "b1")),
        publisher.publish(actions.Outgoing(bob, bobs, "second", "b2")),
        publisher.publish(actions.Outgoing(alice, room, "retry", "a1")),
        return_exceptions=True,
    )
    assert isinstance(results[1], BadRequest)
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert [(r.message.seq, r.message.body, r.created) for r in ok] == [
        (1, "first", True),
        (2, "second", True),
        (1, "first", False),
    ]


async def test_a_failed_batch_fails_each_waiting_publish(lobby: Room, alice: Any) -> None:
    room = await aget_room_for_user(alice, "lobby")
    gone = Room(pk=room.pk + 1000, slug="gone", title="gone")
    gone.is_member = True  # type: ignore[attr-defined]  # as the access helper would say
    results = await asyncio.gather(
        *(publisher.publish(actions.Outgoing(alice, gone, "lost", f"x{i}")) for i in range(3)),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [Room.DoesNotExist] * 3
    # The queue recovers: the next publish to a real room is stored.
    sent = await publisher.publish(actions.Outgoing(alice, room, "kept", "y"))
    assert sent.message.seq == 1
    assert not publisher._queues


async def test_a_publish_nobody_waits_for_any_more_is_skipped(lobby: Room, alice: Any) -> None:
    room = await aget_room_for_user(alice, "lobby")
    first = asyncio.ensure_future(publisher.publish(actions.Outgoing(alice, room, "a", "a")))
    await asyncio.sleep(0)  # the first batch is now in flight; the next one waits
    abandoned = asyncio.ensure_future(publisher.publish(actions.Outgoing(alice, room, "b", "b")))
    await asyncio.sleep(0)
    abandoned.cancel()
    last = await publisher.publish(actions.Outgoing(alice, room, "c", "c"))
    assert (await first).message.seq == 1
    assert last.message.seq == 2
    assert await sync_to_async(Message.objects.filter(client_msg_id="b").exists)() is False
