"""The one place that broadcasts. Only web/actions.py calls these, after commit.

Each event is serialised once here, not once per recipient: sockets get the
ready frame text as it is. Everything travels through the fan-out
(realtime/fanout.py): room events to the room's subscribers in every process,
user events to every socket of that user.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from realtime import fanout
from realtime.groups import room_group, user_group

logger = logging.getLogger(__name__)


def send_messages(messages: list[tuple[int, int, dict[str, Any]]]) -> None:
    """Broadcast stored messages (room id, seq, frame), each room's in seq order."""
    _publish(
        *(
            (
                room_group(room_id),
                {
                    "type": "chat.message",
                    "room_id": room_id,
                    "seq": seq,
                    "text": orjson.dumps(frame).decode(),
                },
            )
            for room_id, seq, frame in messages
        )
    )


def send_typing(room_id: int, room_slug: str, username: str) -> None:
    """Tell the room's in-sync subscribers someone is typing (not stored, no seq)."""
    frame = {"type": "typing", "room": room_slug, "user": username}
    event = {
        "type": "room.typing",
        "room_id": room_id,
        "seq": fanout.EPHEMERAL,
        "text": orjson.dumps(frame).decode(),
    }
    _publish((room_group(room_id), event))


def send_room_revoked(user_id: Any, room_id: int, slug: str) -> None:
    """Tell the user's sockets they lost access to a room (`room.revoked`)."""
    _publish((user_group(user_id), {"type": "room.revoked", "room_id": room_id, "room": slug}))


def send_session_ended(
    user_id: Any, *, session_key: str | None = None, token_ids: list[int] | None = None
) -> None:
    """Close the user's sockets of that session, of those tokens, or (neither) all of them."""
    event = {"type": "session.ended", "session_key": session_key, "token_ids": token_ids}
    _publish((user_group(user_id), event))


def send_user_changed(user_id: Any) -> None:
    """Ask the user's sockets to check their credentials again (`user.changed`)."""
    _publish((user_group(user_id), {"type": "user.changed"}))


def _publish(*items: tuple[str, dict[str, Any]]) -> None:
    """Send events, in order, each to its group (all room events in one round trip to Redis)."""
    try:
        rooms = [
            (int(group.removeprefix("room.")), event["seq"], event["text"])
            for group, event in items
            if group.startswith("room.")
        ]
        if rooms:
            fanout.publish_many(rooms)
        for group, event in items:
            if group.startswith("user."):
                fanout.publish_user(group.removeprefix("user."), event)
    except Exception:
        # What an action committed stays committed; subscribers fill the gap from the
        # database on the next message or after the feed reconnects. A broadcast failure
        # must not fail the action.
        logger.exception("broadcast of %s failed", sorted({group for group, _ in items}))
