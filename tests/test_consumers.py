"""The /ws/ consumer in-process (Channels' WebsocketCommunicator, in-memory layer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from project.asgi import application
from realtime import events
from realtime.groups import room_group
from web import actions, cache
from web.models import Membership, Message, Room

pytestmark = pytest.mark.django_db(transaction=True)


def token_headers(username: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {actions.do_issue_token(username)}".encode())]


class Socket:
    """A connected test client that speaks JSON frames."""

    def __init__(self, communicator: WebsocketCommunicator, *, presence: bool = False):
        self.comm = communicator
        # Presence frames (who is online) come on every subscribe and whenever someone
        # joins or leaves; tests of something else skip them (tests/test_presence.py reads them).
        self.presence = presence
        self.pending: list[dict[str, Any]] = []  # read ahead of the caller (see until)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.comm.send_to(text_data=orjson.dumps(frame).decode())

    async def recv(self) -> dict[str, Any]:
        if self.pending:
            return self.pending.pop(0)
        while True:
            data: dict[str, Any] = orjson.loads(await self.comm.receive_from(timeout=3))
            if self.presence or data.get("type") != "presence":
                return data

    async def until(self, kind: str) -> tuple[dict[str, Any], list[int]]:
        """Read frames up to the first of `kind`; return it and the seqs of messages before it."""
        seqs: list[int] = []
        while True:
            frame = await self.recv()
            if frame["type"] == kind:
                if kind == "subscribed" and not self.presence:
                    await self._skip_presence_snapshot()
                return frame, seqs
            assert frame["type"] == "message", frame
            seqs.append(frame["seq"])

    async def _skip_presence_snapshot(self) -> None:
        # It follows `subscribed` (after the messages that came in meanwhile): read it now,
        # so a test reading raw output next does not see it.
        while True:
            frame = orjson.loads(await self.comm.receive_from(timeout=3))
            if frame.get("type") == "presence" and "online" in frame:
                return
            if frame.get("type") != "presence":
                self.pending.append(frame)

    async def nothing(self) -> bool:
        if self.pending:
            return False
        while not await self.comm.receive_nothing(timeout=0.2):
            frame = orjson.loads(await self.comm.receive_from(timeout=3))
            if self.presence or frame.get("type") != "presence":
                self.pending.append(frame)  # for the next recv
                return False
        return True


async def connect(headers: list[tuple[bytes, bytes]]) -> tuple[WebsocketCommunicator, Any]:
    communicator = WebsocketCommunicator(application, "/ws/", headers=headers)
    connected, code = await communicator.connect(timeout=3)
    return communicator, (connected, code)


async def open_socket(username: str) -> Socket:
    """A connected socket of the user, authenticated with a new token."""
    communicator, (connected, _) = await connect(await sync_to_async(token_headers)(username))
    assert connected
    return Socket(communicator)


async def session_socket(user: Any) -> tuple[Socket, Client]:
    """A connected socket of the user's browser session (from an allowed Origin), and the
    browser."""
    browser = Client()
    await sync_to_async(browser.force_login)(user)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    communicator, (connected, _) = await connect(
        [(b"cookie", cookie), (b"origin", b"http://127.0.0.1:8000")]
    )
    assert connected
    return Socket(communicator), browser


@pytest.fixture
async def alice_ws(alice: Any) -> AsyncIterator[Socket]:
    communicator, (connected, _) = await connect(await sync_to_async(token_headers)("alice"))
    assert connected
    yield Socket(communicator)
    await communicator.disconnect()


@pytest.fixture
async def charlie_ws(charlie: Any) -> AsyncIterator[Socket]:
    communicator, (connected, _) = await connect(await sync_to_async(token_headers)("charlie"))
    assert connected
    yield Socket(communicator)
    await communicator.disconnect()


@pytest.fixture
def den(alice: Any) -> Room:
    return actions.do_create_room(alice, "den", "Alice's den", private=True)


async def publish(user: Any, room: Room, n: int, prefix: str = "c") -> None:
    for i in range(n):
        await sync_to_async(actions.do_send_message)(user, room, f"m{i}", f"{prefix}{i}")


async def test_it_refuses_an_anonymous_handshake(db: None) -> None:
    # A close before accept; real servers turn it into HTTP 403 (see tests/e2e).
    _, (connected, _) = await connect([(b"origin", b"http://127.0.0.1")])
    assert not connected


async def test_it_refuses_an_unknown_token(db: None) -> None:
    _, (connected, _) = await connect([(b"authorization", b"Bearer ct_forged")])
    assert not connected


@pytest.mark.parametrize("path", ["/ws", "/ws/x/", "/nope/"])
async def test_it_refuses_other_paths(alice: Any, path: str) -> None:
    communicator = WebsocketCommunicator(
        application, path, headers=await sync_to_async(token_headers)("alice")
    )
    connected, _ = await communicator.connect(timeout=3)
    assert not connected


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        (b"http://127.0.0.1:8000", True),
        (b"http://localhost", True),
        (b"https://evil.example", False),
        (b"http://127.0.0.1.evil.example", False),
        (b"null", False),
        (None, False),
    ],
)
async def test_session_handshakes_need_an_allowed_origin(
    alice: Any, origin: bytes | None, accepted: bool
) -> None:
    browser = Client()
    await sync_to_async(browser.force_login)(alice)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    headers = [(b"cookie", cookie)] + ([(b"origin", origin)] if origin else [])
    communicator, (connected, _) = await connect(headers)
    assert connected is accepted
    if connected:
        await communicator.disconnect()


async def test_subscribe_since_backfills_then_goes_live(
    general: Room, alice: Any, alice_ws: Socket
) -> None:
    await publish(alice, general, 3)
    await alice_ws.send({"type": "subscribe", "ref": "s", "room": "general", "since": 1})
    subscribed, seqs = await alice_ws.until("subscribed")
    assert seqs == [2, 3]
    assert subscribed == {"type": "subscribed", "ref": "s", "room": "general", "last_seq": 3}
    await publish(alice, general, 1, prefix="live")
    assert (await alice_ws.recv())["seq"] == 4


async def test_subscribe_without_since_is_live_only(
    general: Room, alice: Any, alice_ws: Socket
) -> None:
    await publish(alice, general, 2)
    await alice_ws.send({"type": "subscribe", "ref": "s", "room": "general"})
    subscribed, seqs = await alice_ws.until("subscribed")
    assert (seqs, subscribed["last_seq"]) == ([], 2)
    await publish(alice, general, 1, prefix="live")
    assert (await alice_ws.recv())["seq"] == 3


async def test_publish_is_acked_and_delivered(general: Room, alice_ws: Socket) -> None:
    await alice_ws.send({"type": "subscribe", "ref": "s", "room": "general", "since": 0})
    await alice_ws.until("subscribed")
    frame = {"type": "publish", "ref": "p", "room": "general", "body": "hi", "client_msg_id": "x"}
    await alice_ws.send(frame)
    # The ack and the broadcast race each other; both must come.
    received = {f["type"]: f for f in [await alice_ws.recv(), await alice_ws.recv()]}
    ack, message = received["ack"], received["message"]
    assert ack == {"type": "ack", "ref": "p", "room": "general", "seq": 1, "client_msg_id": "x"}
    assert (message["type"], message["seq"], message["body"], message["sender"]) == (
        "message",
        1,
        "hi",
        "alice",
    )
    await alice_ws.send(frame)  # a retry: same ack, nothing new delivered
    assert (await alice_ws.recv()) == ack
    assert await alice_ws.nothing()


async def test_lost_broadcasts_are_filled_from_the_database(
    general: Room, alice: Any, alice_ws: Socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    await alice_ws.send({"type": "subscribe", "ref": "s", "room": "general"})
    await alice_ws.until("subscribed")
    real = events._publish
    monkeypatch.setattr(events, "_publish", lambda *items: None)
    await publish(alice, general, 2, prefix="lost")  # stored, never broadcast
    monkeypatch.setattr(events, "_publish", real)
    await publish(alice, general, 1, prefix="seen")
    assert [(await alice_ws.recv())["seq"] for _ in range(3)] == [1, 2, 3]
    assert await alice_ws.nothing()


async def test_broadcasts_overtaking_each_other_arrive_in_order_once(
    general: Room, alice: Any, alice_ws: Socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    await alice_ws.send({"type": "subscribe", "ref": "s", "room": "general"})
    await alice_ws.until("subscribed")
    held: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "_publish", lambda *items: held.extend(e for _, e in items))
    await publish(alice, general, 3)
    assert [event["seq"] for event in held] == [1, 2, 3]
    for event in reversed(held):  # seq 3 first, then 2, then 1
        await get_channel_layer().group_send(room_group(event["room_id"]), event)
    assert [(await alice_ws.recv())["seq"] for _ in range(3)] == [1, 2, 3]
    assert await alice_ws.nothing()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{broken", "bad_request"),
        ({"type": "teleport", "ref": "r"}, "bad_request"),
        ({"type": "subscribe", "ref": "r"}, "bad_request"),
        ({"type": "subscribe", "ref": "r", "room": "general", "since": "0"}, "bad_request"),
        ({"type": "subscribe", "ref": "r", "room": "atlantis"}, "not_found"),
        ({"type": "subscribe", "ref": "r", "room": "den"}, "forbidden"),
        (
            {"type": "publish", "ref": "r", "room": "den", "body": "x", "client_msg_id": "c"},
            "forbidden",
        ),
        (
            {
                "type": "publish",
                "ref": "r",
                "room": "general",
                "body": "x" * 4001,
                "client_msg_id": "c",
            },
            "too_large",
        ),
        (
            {"type": "publish", "ref": "r", "room": "general", "body": "x", "client_msg_id": ""},
            "bad_request",
        ),
        (
            {"type": "publish", "ref": "r", "room": "general", "body": ["x"], "client_msg_id": "c"},
            "bad_request",
        ),
    ],
)
async def test_bad_input_gets_an_error_and_the_connection_stays_open(
    general: Room, den: Room, charlie_ws: Socket, frame: Any, code: str
) -> None:
    if isinstance(frame, str):
        await charlie_ws.comm.send_to(text_data=frame)
    else:
        await charlie_ws.send(frame)
    error = await charlie_ws.recv()
    assert (error["type"], error["code"]) == ("error", code)
    assert error.get("ref") == (None if isinstance(frame, str) else "r")
    await charlie_ws.send({"type": "ping", "ref": "still-there"})
    assert await charlie_ws.recv() == {"type": "pong", "ref": "still-there"}
    assert not await Message.objects.aexists()


async def test_an_oversized_frame_closes_with_1009(alice_ws: Socket) -> None:
    await alice_ws.comm.send_to(text_data="x" * (64 * 1024 + 1))
    closed = await alice_ws.comm.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 1009}


async def test_binary_frames_are_refused(alice_ws: Socket) -> None:
    await alice_ws.comm.send_to(bytes_data=b"\x00\x01")
    assert (await alice_ws.recv())["code"] == "bad_request"


@pytest.fixture
async def bob_in_den(alice: Any, bob: Any, den: Room) -> AsyncIterator[Socket]:
    """Bob, a member of Alice's private den, subscribed to it."""
    await sync_to_async(actions.do_add_member)(alice, den, "bob")
    communicator, (connected, _) = await connect(await sync_to_async(token_headers)("bob"))
    assert connected
    bob_ws = Socket(communicator)
    await bob_ws.send({"type": "subscribe", "ref": "s", "room": "den"})
    await bob_ws.until("subscribed")
    yield bob_ws
    await communicator.disconnect()


async def test_a_removed_member_stops_receiving(alice: Any, den: Room, bob_in_den: Socket) -> None:
    bob_ws = bob_in_den
    await sync_to_async(actions.do_remove_member)(alice, den, "bob")
    assert await bob_ws.recv() == {"type": "unsubscribed", "room": "den", "reason": "removed"}
    await publish(alice, den, 1)
    assert await bob_ws.nothing()
    await bob_ws.send(
        {"type": "publish", "ref": "p", "room": "den", "body": "x", "client_msg_id": "b"}
    )
    assert (await bob_ws.recv())["code"] == "forbidden"


async def test_after_a_lost_feed_sockets_check_their_rooms_again(
    bob: Any, den: Room, bob_in_den: Socket
) -> None:
    bob_ws = bob_in_den
    await bob_ws.send(
        {"type": "publish", "ref": "p", "room": "den", "body": "x", "client_msg_id": "b1"}
    )
    await bob_ws.until("ack")
    # Removed while the feed was down: the room.revoked event is lost with it (the cache is
    # told, as do_remove_member tells it: web/cache.py).
    await sync_to_async(Membership.objects.filter(room=den, user=bob).delete)()
    await sync_to_async(cache.changed_memberships)([bob.pk])
    get_channel_layer().feed_lost()
    unsubscribed, _ = await bob_ws.until("unsubscribed")
    assert unsubscribed == {"type": "unsubscribed", "room": "den", "reason": "removed"}
    await bob_ws.send(
        {"type": "publish", "ref": "p2", "room": "den", "body": "x", "client_msg_id": "b2"}
    )
    assert (await bob_ws.recv())["code"] == "forbidden"


async def test_unsubscribe_stops_delivery(general: Room, alice: Any, alice_ws: Socket) -> None:
    await alice_ws.send({"type": "subscribe", "ref": "s", "room": "general"})
    await alice_ws.until("subscribed")
    await alice_ws.send({"type": "unsubscribe", "ref": "u", "room": "general"})
    assert await alice_ws.recv() == {"type": "unsubscribed", "ref": "u", "room": "general"}
    await publish(alice, general, 1)
    assert await alice_ws.nothing()
