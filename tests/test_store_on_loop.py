"""A batch that is one statement is stored by awaiting it on the event loop (psycopg's
asyncio driver, web/models/async_database.py); the others go to the store threads."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connections
from django.test import override_settings

from realtime import publisher
from realtime.process import close_process
from tests.conftest import CaptureEvents
from tests.locks import locked_elsewhere
from web import actions
from web.access import aget_room_for_user
from web.errors import Forbidden, NotFound
from web.models import Membership, Message, Room
from web.models.async_database import APPLICATION_NAME
from web.models.notifications import Notification

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def lobby(alice: Any) -> Room:
    room = Room.objects.create(slug="lobby", title="Lobby")
    Membership.objects.create(user=alice, room=room)
    return room


def _publish(user: Any, room: Room, body: str, client_msg_id: str) -> Any:
    member = bool(getattr(room, "is_member", False))
    return publisher.publish(actions.Outgoing(user, room, body, client_msg_id, member))


async def _loop_backends(waiting_for: str | None = None) -> set[int]:
    """PostgreSQL backends of the store's pool on the event loop (those waiting for this
    wait_event_type)."""

    def query() -> set[int]:
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                " AND wait_event_type IS NOT DISTINCT FROM coalesce(%s, wait_event_type)",
                [APPLICATION_NAME, waiting_for],
            )
            return {pid for (pid,) in cursor.fetchall()}

    return await sync_to_async(query, thread_sensitive=False)()


async def test_a_member_s_publish_is_stored_on_the_loop_and_broadcast(
    lobby: Room, alice: Any, fresh_process: Any, capture_events: CaptureEvents
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    assert room.is_member  # type: ignore[attr-defined]  # aget_room_for_user's annotation
    with capture_events(2) as captured:
        first = await _publish(alice, room, "hello", "c1")
        second = await _publish(alice, room, "again", "c2")
    assert (first.message.seq, second.message.seq) == (1, 2)
    assert fresh_process.publisher.threads.threads == []  # no store thread was needed
    assert [event["seq"] for _, event in captured] == [1, 2]
    frame = orjson.loads(captured[0][1]["text"])
    assert frame == first.frame
    stored = await Message.objects.aget(room=room, seq=1)
    # The same frame a thread makes from the row (the time zone's loader included).
    assert frame == stored.to_event("lobby", "alice")
    assert frame["ts"].endswith("Z")


async def test_a_retry_on_the_loop_gets_the_stored_message_and_takes_no_seq(
    lobby: Room, alice: Any, fresh_process: Any
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    first = await _publish(alice, room, "hello", "same")
    again = await _publish(alice, room, "hello", "same")
    assert (again.message.seq, again.created, first.created) == (1, False, True)
    nxt = await _publish(alice, room, "next", "other")
    assert nxt.message.seq == 2
    assert fresh_process.publisher.threads.threads == []


async def test_a_publish_that_joins_or_mentions_is_stored_on_a_thread(
    alice: Any, bob: Any, fresh_process: Any
) -> None:
    await Room.objects.acreate(slug="open", title="Open")
    room = await aget_room_for_user(bob, "open")  # bob is not a member: posting joins
    joined = await _publish(bob, room, "hi", "b1")
    assert await Membership.objects.filter(user=bob, room=room).aexists()
    assert len(fresh_process.publisher.threads.threads) == 1
    room = await aget_room_for_user(bob, "open")
    mentioned = await _publish(bob, room, "hey @alice", "b2")
    assert (joined.message.seq, mentioned.message.seq) == (1, 2)
    assert await Notification.objects.filter(user=alice).aexists()


async def test_a_deactivated_sender_or_a_missing_room_is_refused_on_the_loop(
    lobby: Room, alice: Any, fresh_process: Any
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    gone = Room(pk=room.pk + 1000, slug="gone", title="gone")
    gone.is_member = True  # type: ignore[attr-defined]  # as the access helper said before it went
    with pytest.raises(NotFound):
        await _publish(alice, gone, "lost", "x")
    await type(alice).objects.filter(pk=alice.pk).aupdate(is_active=False)
    with pytest.raises(Forbidden):
        await _publish(alice, room, "too late", "y")
    assert not await Message.objects.aexists()
    assert fresh_process.publisher.threads.threads == []


@override_settings(PUBLISH_IN_FLIGHT=1)
async def test_a_lost_loop_connection_fails_its_batch_and_the_next_one_is_stored(
    lobby: Room, alice: Any, fresh_process: Any
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    await _publish(alice, room, "first", "a")
    (pid,) = await _loop_backends()

    def terminate() -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

    await sync_to_async(terminate, thread_sensitive=False)()
    with pytest.raises(OperationalError):  # Django's, as a thread's cursor raises it
        await _publish(alice, room, "lost", "b")
    sent = await _publish(alice, room, "kept", "c")
    assert sent.message.seq == 2
    assert await _loop_backends() != {pid}
    assert fresh_process.publisher.threads.threads == []


@override_settings(STORE_ON_EVENT_LOOP=False)
async def test_with_the_setting_off_every_batch_goes_to_a_thread(
    lobby: Room, alice: Any, fresh_process: Any
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    sent = await _publish(alice, room, "hello", "c1")
    assert sent.message.seq == 1
    assert len(fresh_process.publisher.threads.threads) == 1


async def test_a_batch_being_stored_at_shutdown_is_still_stored_and_broadcast(
    lobby: Room, alice: Any, fresh_process: Any, capture_events: CaptureEvents
) -> None:
    room = await aget_room_for_user(alice, "lobby")
    # Another transaction holds the room's row: the store's statement waits for it.
    holding = locked_elsewhere(lambda: len(Room.objects.select_for_update().filter(pk=room.pk)))
    with holding as lock, capture_events(1) as captured:
        sent = asyncio.ensure_future(_publish(alice, room, "late", "c1"))
        for _ in range(300):
            if await _loop_backends(waiting_for="Lock"):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the store's statement never waited for the room's lock")
        closing = asyncio.ensure_future(close_process())
        await asyncio.sleep(0.2)
        assert not closing.done()  # it waits for the batch being stored
        lock.set()
        await asyncio.wait_for(closing, 30)
        assert (await sent).message.seq == 1
    assert [event["seq"] for _, event in captured] == [1]
    assert await Message.objects.filter(room=room, body="late").aexists()
