"""Publishes from one process are stored in batches per room, each with its own result."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import OperationalError, connection, connections
from django.test import override_settings

from realtime import publisher
from realtime.process import close_process, get_process
from web import actions
from web.access import aget_room_for_user
from web.errors import BadRequest, NotFound
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
    rest = asyncio.gather(*(publisher.publish(o) for o in outgoing[1:]))
    sent = [await first, *await rest]
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
    assert not get_process().publisher.waiting  # nothing kept once quiet
    assert not get_process().publisher.busy


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


async def test_a_publish_to_a_missing_room_does_not_refuse_its_batch(
    lobby: Room, alice: Any
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    gone = Room(pk=room.pk + 1000, slug="gone", title="gone")
    results = await asyncio.gather(
        # A member, as the access helper would have said before the room went.
        publisher.publish(actions.Outgoing(alice, gone, "lost", "x", member=True)),
        publisher.publish(actions.Outgoing(alice, room, "kept", "y")),
        return_exceptions=True,
    )
    assert isinstance(results[0], NotFound)
    assert isinstance(results[1], actions.SentMessage)
    assert results[1].message.seq == 1


async def test_a_failed_batch_fails_each_waiting_publish_and_the_next_one_runs(
    lobby: Room, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    real = publisher.send_messages
    failed: list[int] = []

    async def database_down_once(batch: list[actions.Outgoing]) -> Any:
        if not failed:
            failed.append(len(batch))
            raise OperationalError("the database went away")
        return await real(batch)

    monkeypatch.setattr(publisher, "send_messages", database_down_once)
    results = await asyncio.gather(
        *(publisher.publish(actions.Outgoing(alice, room, "m", f"x{i}")) for i in range(3)),
        return_exceptions=True,
    )
    assert failed == [3]  # publishes of one turn of the loop go together
    assert [type(r) for r in results] == [OperationalError] * 3
    sent = await publisher.publish(actions.Outgoing(alice, room, "kept", "y"))
    assert sent.message.seq == 1
    assert not get_process().publisher.waiting
    assert not get_process().publisher.busy
    assert get_process().publisher.in_flight == 0


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


async def test_an_error_on_a_store_thread_fails_its_batch_and_the_thread_goes_on(
    lobby: Room, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    real = actions.do_send_messages
    threads: set[str] = set()
    failed: list[int] = []

    def down_once(batch: list[actions.Outgoing]) -> Any:
        threads.add(threading.current_thread().name)
        if not failed:
            failed.append(len(batch))
            raise OperationalError("the database went away")
        return real(batch)

    monkeypatch.setattr(publisher, "do_send_messages", down_once)
    results = await asyncio.gather(
        *(publisher.publish(actions.Outgoing(alice, room, "m", f"x{i}")) for i in range(2)),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [OperationalError] * 2
    kept = [actions.Outgoing(alice, room, "kept", f"y{i}") for i in range(5)]
    sent = [await publisher.publish(outgoing) for outgoing in kept]
    assert [s.message.seq for s in sent] == [1, 2, 3, 4, 5]
    # The publisher's own threads, no more than the transactions it keeps in flight.
    assert threads <= {f"store-{n}" for n in range(settings.PUBLISH_IN_FLIGHT)}


async def test_closing_the_process_ends_its_store_threads(lobby: Room, alice: Any) -> None:
    room = await aget_room_for_user(alice, "lobby")
    await publisher.publish(actions.Outgoing(alice, room, "m", "x"))
    started = list(get_process().publisher.threads.threads)
    assert started
    await close_process()
    for thread in started:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in started)


# Its publishes are one statement each: the setting off keeps them on the store threads.
@override_settings(PUBLISH_IN_FLIGHT=1, STORE_ON_EVENT_LOOP=False)
async def test_a_store_thread_keeps_its_connection_until_it_fails(
    lobby: Room, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await close_process()  # a publisher of one thread
    room = await aget_room_for_user(alice, "lobby")
    real = actions.do_send_messages
    backends: list[int] = []

    def on_its_connection(batch: list[actions.Outgoing]) -> Any:
        connection.ensure_connection()
        backends.append(connection.connection.info.backend_pid)
        return real(batch)

    def publish(body: str, client_msg_id: str) -> Any:
        # A member already: no membership insert, whose transaction would close a broken
        # connection by itself.
        return publisher.publish(actions.Outgoing(alice, room, body, client_msg_id, True))

    monkeypatch.setattr(publisher, "do_send_messages", on_its_connection)
    for i in range(3):  # one at a time: each a batch of its own
        await publish("m", f"a{i}")
    assert backends[0] == backends[1] == backends[2]  # kept from one batch to the next
    assert len(get_process().publisher.threads.threads) == 1

    def terminate(pid: int) -> None:
        with connections["default"].cursor() as cursor:  # this thread's own connection
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

    await sync_to_async(terminate, thread_sensitive=False)(backends[-1])
    with pytest.raises(OperationalError):
        await publish("lost", "b")
    sent = await publish("kept", "c")
    assert sent.message.seq == 4
    assert backends[-1] != backends[2]  # a broken connection is not kept


@override_settings(STORE_ON_EVENT_LOOP=False)  # as above
async def test_a_store_thread_outlives_a_failure_to_hand_its_connection_back(
    lobby: Room, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    real = connections.close_all
    failures: list[str] = []

    def close_all_failing_once() -> None:
        if not failures:
            failures.append(threading.current_thread().name)
            raise RuntimeError("closing failed")
        real()

    monkeypatch.setattr(publisher, "KEEP_CONNECTION_SECONDS", 0.0)  # hand back every batch
    monkeypatch.setattr(connections, "close_all", close_all_failing_once)
    for i in range(2 * settings.PUBLISH_IN_FLIGHT):
        outgoing = actions.Outgoing(alice, room, "m", f"a{i}", True)
        sent = await asyncio.wait_for(publisher.publish(outgoing), timeout=10)
        assert sent.message.seq == i + 1
    assert len(failures) == 1
    assert failures[0].startswith("store-")
