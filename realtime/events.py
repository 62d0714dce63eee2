"""The one place that broadcasts. Only web/actions.py calls these, after commit.

Each event is serialised once here, not once per recipient: consumers forward
the ready frame text as it is.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from realtime import fanout
from realtime.groups import room_group, user_group

logger = logging.getLogger(__name__)


def _group_send(group: str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, event)
    except Exception:
        # The message is committed; subscribers fill the gap from the database on the
        # next message or when they resubscribe. A broadcast failure must not fail the publish.
        logger.exception("broadcast to %s failed", group)


def send_message(room_id: int, seq: int, frame: dict[str, Any]) -> None:
    """Broadcast a stored message to the room's subscribers in every process.

    Room messages take the fan-out path (realtime/fanout.py: one Redis PUBLISH,
    decoded once per process) rather than a channel-layer group_send, which
    works per member.
    """
    event = {
        "type": "chat.message",
        "room_id": room_id,
        "seq": seq,
        "text": orjson.dumps(frame).decode(),
    }
    _publish(room_group(room_id), event)


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


def send_session_ended(
    user_id: Any, *, session_key: str | None = None, token_ids: list[int] | None = None
) -> None:
    """Close the user's sockets of that session, of those tokens, or (neither) all of them."""
    _group_send(
        user_group(user_id),
        {"type": "session.ended", "session_key": session_key, "token_ids": token_ids},
    )


def _publish(group: str, event: dict[str, Any]) -> None:
    try:
        fanout.publish(event["room_id"], event["seq"], event["text"])
    except Exception:
        # The message is committed; subscribers fill the gap from the database on the
        # next message or after the feed reconnects. A broadcast failure must not fail
        # the publish.
        logger.exception("broadcast to %s failed", group)


def send_room_revoked(user_id: Any, room_id: int, slug: str) -> None:
    """Tell the user's sockets they lost access to a room (`room.revoked`)."""
    _group_send(user_group(user_id), {"type": "room.revoked", "room_id": room_id, "room": slug})
