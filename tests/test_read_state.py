"""Read state: the marker moves forward only, and every socket of the user hears of it."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from tests.conftest import CaptureEvents
from tests.test_consumers import Socket, open_socket, publish
from web import actions
from web.models import Membership, Room

pytestmark = pytest.mark.django_db(transaction=True)


async def read(socket: Socket, seq: int, ref: str = "9", room: str = "general") -> dict[str, Any]:
    await socket.send({"type": "read", "ref": ref, "room": room, "seq": seq})
    return await socket.recv()


async def test_reading_moves_the_marker_forward_and_tells_the_other_tabs(
    general: Room, alice: Any, bob: Any
) -> None:
    await publish(alice, general, 3)
    tab, other_tab, bob_ws = (
        await open_socket("alice"),
        await open_socket("alice"),
        await open_socket("bob"),
    )
    frame = {"type": "unread", "room": "general", "count": 1, "last_read_seq": 2}
    assert await read(tab, 2) == {**frame, "ref": "9"}
    assert await other_tab.recv() == frame
    # Never back: the asker hears where it stands; nothing moved, so no one else hears.
    assert await read(tab, 1, ref="10") == {**frame, "ref": "10"}
    assert await other_tab.nothing()
    # Past the room's last seq: its last seq.
    assert await read(other_tab, 99, ref="x") == {
        "type": "unread",
        "room": "general",
        "count": 0,
        "last_read_seq": 3,
        "ref": "x",
    }
    assert (await tab.recv())["last_read_seq"] == 3
    assert await tab.nothing()
    assert await bob_ws.nothing()
    marker = await Membership.objects.aget(user=alice, room=general)
    assert marker.last_read_seq == 3
    for socket in (tab, other_tab, bob_ws):
        await socket.comm.disconnect()


async def test_the_marker_is_clamped_to_the_room_as_it_is_now(general: Room, alice: Any) -> None:
    tab = await open_socket("alice")
    await publish(alice, general, 1)
    assert (await read(tab, 1))["last_read_seq"] == 1  # the socket remembers the room now
    await publish(alice, general, 2, prefix="later")
    assert await read(tab, 99) == {
        "type": "unread",
        "room": "general",
        "count": 0,
        "last_read_seq": 3,
        "ref": "9",
    }
    await tab.comm.disconnect()


async def test_reading_over_http_reaches_every_socket_of_the_user(
    general: Room, alice: Any
) -> None:
    await publish(alice, general, 2)
    tab = await open_socket("alice")
    browser = Client()
    await sync_to_async(browser.force_login)(alice)
    response = await sync_to_async(browser.post)(
        "/api/rooms/general/read", {"seq": 1}, content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json() == {"room": "general", "last_read_seq": 1}
    assert await tab.recv() == {"type": "unread", "room": "general", "count": 1, "last_read_seq": 1}
    await tab.comm.disconnect()


async def test_bad_reads_are_refused_with_an_error(general: Room, alice: Any, charlie: Any) -> None:
    den = await sync_to_async(actions.do_create_room)(alice, "den", "Den", True)
    tab = await open_socket("charlie")
    assert await read(tab, 1, room="nowhere") == {
        "type": "error",
        "code": "not_found",
        "message": "no room 'nowhere'",
        "ref": "9",
    }
    assert (await read(tab, 1, room=den.slug))["code"] == "forbidden"
    assert (await read(tab, -1))["code"] == "bad_request"
    assert not await Membership.objects.filter(user=charlie, room=den).aexists()
    await tab.comm.disconnect()


def test_the_unread_event(general: Room, alice: Any, capture_events: CaptureEvents) -> None:
    for i in range(2):
        actions.do_send_message(alice, general, "m", f"c{i}")
    with capture_events(1) as captured:
        state = actions.do_read(alice, general, 1, origin="p:1")
    assert state == actions.ReadState("general", 1, 1)
    assert captured == [
        (
            f"user.{alice.pk}",
            {
                "type": "unread.changed",
                "room_id": general.pk,
                "room": "general",
                "count": 1,
                "last_read_seq": 1,
                "origin": "p:1",
            },
        )
    ]
    with capture_events(0):
        actions.do_read(alice, general, 1)
