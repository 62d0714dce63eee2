"""Flood control, connection caps, typing, and sockets closing when their session ends."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.test import override_settings

from realtime.consumers import CLOSE_POLICY, CLOSE_TOO_SLOW
from realtime.groups import room_group
from realtime.user_events import CLOSE_SESSION_ENDED
from tests.test_consumers import connect, open_socket, session_socket, token_headers
from web import actions
from web.models import ApiToken, Room

pytestmark = pytest.mark.django_db(transaction=True)


def publish_frame(i: int) -> dict[str, Any]:
    return {
        "type": "publish",
        "ref": str(i),
        "room": "general",
        "body": "x",
        "client_msg_id": f"f{i}",
    }


@override_settings(
    PUBLISH_RATE=1.0, PUBLISH_BURST=3.0, RATE_STRIKES=2.0, RATE_STRIKES_PER_SECOND=0.1
)
async def test_a_flooding_client_is_refused_then_closed(general: Room, alice: Any) -> None:
    ws = await open_socket("alice")
    codes = []
    for i in range(4):
        await ws.send(publish_frame(i))
        codes.append((await ws.recv()).get("code"))
    assert codes == [None, None, None, "rate_limited"]  # three acks, then refused
    await ws.send(publish_frame(5))
    assert (await ws.recv())["code"] == "rate_limited"
    await ws.send(publish_frame(6))  # the third refusal in a row closes the socket
    assert (await ws.recv())["code"] == "rate_limited"
    assert await ws.comm.receive_output(timeout=3) == {
        "type": "websocket.close",
        "code": CLOSE_POLICY,
    }
    assert await Room.objects.filter(pk=general.pk).values_list("last_seq", flat=True).aget() == 3


@override_settings(MAX_CONNECTIONS_PER_USER=2)
async def test_connections_per_user_are_capped(alice: Any) -> None:
    sockets = [await open_socket("alice") for _ in range(2)]
    extra = await open_socket("alice")
    error = await extra.recv()
    assert (error["type"], error["code"]) == ("error", "rate_limited")
    assert (await extra.comm.receive_output(timeout=3))["code"] == CLOSE_POLICY
    await sockets[0].comm.disconnect()
    again = await open_socket("alice")  # a slot is free again
    await again.send({"type": "ping", "ref": "p"})
    assert await again.recv() == {"type": "pong", "ref": "p"}
    await again.comm.disconnect()
    await sockets[1].comm.disconnect()


async def test_typing_reaches_subscribers_and_is_not_stored(
    general: Room, alice: Any, bob: Any
) -> None:
    alice_ws, bob_ws = await open_socket("alice"), await open_socket("bob")
    await bob_ws.send({"type": "subscribe", "ref": "s", "room": "general"})
    await bob_ws.until("subscribed")
    await alice_ws.send({"type": "typing", "room": "general"})
    assert await bob_ws.recv() == {"type": "typing", "room": "general", "user": "alice"}
    await general.arefresh_from_db()
    assert general.last_seq == 0
    for ws in (alice_ws, bob_ws):
        await ws.comm.disconnect()


async def test_revoking_a_token_closes_its_sockets_only(alice: Any) -> None:
    revoked, kept = await open_socket("alice"), await open_socket("alice")
    token_ids = [pk async for pk in ApiToken.objects.order_by("pk").values_list("pk", flat=True)]
    await sync_to_async(actions.do_revoke_tokens)(ApiToken.objects.filter(pk=token_ids[0]))
    assert await revoked.comm.receive_output(timeout=3) == {
        "type": "websocket.close",
        "code": CLOSE_SESSION_ENDED,
    }
    await kept.send({"type": "ping", "ref": "p"})
    assert await kept.recv() == {"type": "pong", "ref": "p"}
    await kept.comm.disconnect()


async def test_deactivating_a_user_closes_every_socket(alice: Any) -> None:
    headers = await sync_to_async(token_headers)("alice")
    sockets = [await open_socket("alice"), await open_socket("alice")]
    await sync_to_async(actions.do_deactivate_user)(alice)
    for ws in sockets:
        assert (await ws.comm.receive_output(timeout=3))["code"] == CLOSE_SESSION_ENDED
    _, (connected, _) = await connect(headers)  # the token no longer authenticates
    assert not connected


async def test_logging_out_closes_that_sessions_sockets(alice: Any) -> None:
    session, browser = await session_socket(alice)
    other = await open_socket("alice")  # a token socket of the same user stays
    response = await sync_to_async(browser.post)("/accounts/logout/")
    assert response.status_code == 302
    assert (await session.comm.receive_output(timeout=3))["code"] == CLOSE_SESSION_ENDED
    await other.send({"type": "ping", "ref": "p"})
    assert await other.recv() == {"type": "pong", "ref": "p"}
    await other.comm.disconnect()


@override_settings(SLOW_CLIENT_SECONDS=0.0)
async def test_a_socket_cut_off_as_too_slow_publishes_and_types_nothing_more(
    general: Room, alice: Any, bob: Any
) -> None:
    slow = await open_socket("alice")
    await slow.send({"type": "subscribe", "ref": "s", "room": "general"})
    await slow.until("subscribed")
    # A hole makes it catch up; with no time allowed for that, it is cut off at once.
    hole = {"type": "chat.message", "seq": 2, "text": '{"type":"message","seq":2}'}
    await get_channel_layer().group_send(room_group(general.pk), hole)
    assert await slow.comm.receive_output(timeout=3) == {
        "type": "websocket.close",
        "code": CLOSE_TOO_SLOW,
    }
    other = await open_socket("bob")
    await other.send({"type": "subscribe", "ref": "s", "room": "general"})
    await other.until("subscribed")
    # Its close grace period: the server still reads what it sends, and must ignore it.
    await slow.send(publish_frame(1))
    await slow.send({"type": "typing", "room": "general"})
    assert await slow.nothing()
    await general.arefresh_from_db()
    assert general.last_seq == 0
    frames = []
    while not await other.nothing():
        frames.append(await other.recv())
    assert not [f for f in frames if f["type"] == "typing"], frames
    await other.comm.disconnect()
