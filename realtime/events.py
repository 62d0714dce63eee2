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


def send_messages(room_id: int, messages: list[tuple[int, dict[str, Any]]]) -> None:
    """Broadcast stored messages (seq, frame), in seq order, to the room's subscribers."""
    _publish(
        room_group(room_id),
        *(
            {
                "type": "chat.message",
                "room_id": room_id,
                "seq": seq,
                "text": orjson.dumps(frame).decode(),
            }
            for seq, frame in messages
        ),
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
    _publish(room_group(room_id), event)


def send_room_revoked(user_id: Any, room_id: int, slug: str) -> None:
    """Tell the user's sockets they lost access to a room (`room.revoked`)."""
    _publish(user_group(user_id), {"type": "room.revoked", "room_id": room_id, "room": slug})


def send_session_ended(
    user_id: Any, *, session_key: str | None = None, token_ids: list[int] | None = None
) -> None:
    """Close the user's sockets of that session, of those tokens, or (neither) all of them."""
    _publish(
        user_group(user_id),
        {"type": "session.ended", "session_key": session_key, "token_ids": token_ids},
    )


def _publish(group: str, *events: dict[str, Any]) -> None:
    """Send events to one group, in order (a room's in one round trip to Redis)."""
    try:
        if group.startswith("room."):
            fanout.publish_many(
                int(group.removeprefix("room.")), [(e["seq"], e["text"]) for e in events]
            )
        else:
            for event in events:
                fanout.publish_user(group.removeprefix("user."), event)
    except Exception:
        # What an action committed stays committed; subscribers fill the gap from the
        # database on the next message or after the feed reconnects. A broadcast failure
        # must not fail the action.
        logger.exception("broadcast to %s failed", group)
