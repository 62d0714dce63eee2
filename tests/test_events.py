"""One schema check per event type that actions broadcast."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from tests.conftest import CaptureEvents
from web import actions
from web.models import Room

MESSAGE_FRAME = {
    "type": str,
    "room": str,
    "seq": int,
    "sender": str,
    "body": str,
    "client_msg_id": str,
    "ts": str,
}


def check_schema(data: dict[str, Any], schema: dict[str, type]) -> None:
    assert set(data) == set(schema), f"fields {sorted(data)} != {sorted(schema)}"
    for key, kind in schema.items():
        assert isinstance(data[key], kind), f"{key}={data[key]!r} is not {kind.__name__}"


def test_chat_message_event(alice: Any, capture_events: CaptureEvents) -> None:
    general = Room.objects.get(slug="general")
    with capture_events(1) as captured:
        actions.do_send_message(alice, general, "hi", "c1")
    [(_, event)] = captured
    check_schema(event, {"type": str, "room_id": int, "seq": int, "text": str})
    assert event["type"] == "chat.message"
    frame = orjson.loads(event["text"])
    check_schema(frame, MESSAGE_FRAME)
    assert frame["type"] == "message"
    assert frame["ts"].endswith("Z")
    assert datetime.fromisoformat(frame["ts"]).utcoffset() is not None


def test_room_revoked_event(alice: Any, bob: Any, capture_events: CaptureEvents) -> None:
    room = actions.do_create_room(alice, "den", "den", private=True)
    actions.do_add_member(alice, room, "bob")
    with capture_events(1) as captured:
        actions.do_remove_member(alice, room, "bob")
    [(group, event)] = captured
    assert group == f"user.{bob.pk}"
    check_schema(event, {"type": str, "room_id": int, "room": str})
    assert event["type"] == "room.revoked"
