"""The one place that broadcasts. Only web/actions.py calls these, inside its transaction.

Each function builds events and hands them to `send_on_commit`, which sends
them through the channel layer (realtime/layer.py) once the transaction
commits, like Zulip's send_event_on_commit: nothing is broadcast that a
rollback takes back. Room events go to the room's group in every process,
user events to the user's group. A message's frame is serialised once here,
not once per recipient: sockets get the ready text as it is.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from realtime.groups import room_group, user_group

logger = logging.getLogger(__name__)

EPHEMERAL = 0  # the seq of a room event that is not a stored message (realtime/layer.py)

Event = tuple[str, dict[str, Any]]  # (group, message)


def send_messages(
    messages: Sequence[tuple[int, int, dict[str, Any]]], *, committed: bool = False
) -> None:
    """Broadcast stored messages (room id, seq, frame), each room's in seq order. `committed`:
    the caller's statement has committed already, outside Django's transactions (the store
    on the event loop, web/models/async_database.py): sent now."""
    (_publish if committed else send_on_commit)(
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
        "seq": EPHEMERAL,
        "text": orjson.dumps(frame).decode(),
    }
    send_on_commit((room_group(room_id), event))


def send_presence(changes: Sequence[tuple[int, str, list[str], list[str]]]) -> None:
    """Tell rooms' in-sync subscribers who joined and who left (room id, slug, joined, left):
    one frame per room, not stored, no seq."""
    send_on_commit(
        *(
            (
                room_group(room_id),
                {
                    "type": "room.presence",
                    "room_id": room_id,
                    "seq": EPHEMERAL,
                    "text": orjson.dumps(
                        {"type": "presence", "room": slug, "joined": joined, "left": left}
                    ).decode(),
                },
            )
            for room_id, slug, joined, left in changes
        )
    )


def send_unread(
    user_id: Any, room_id: int, slug: str, count: int, last_read_seq: int, origin: str | None
) -> None:
    """Tell the user's sockets their read marker moved (`unread.changed`); `origin`, the
    socket that asked, has answered itself."""
    event = {
        "type": "unread.changed",
        "room_id": room_id,
        "room": slug,
        "count": count,
        "last_read_seq": last_read_seq,
        "origin": origin,
    }
    send_on_commit((user_group(user_id), event))


def send_room_revoked(user_id: Any, room_id: int, slug: str) -> None:
    """Tell the user's sockets they lost access to a room (`room.revoked`)."""
    send_on_commit(
        (user_group(user_id), {"type": "room.revoked", "room_id": room_id, "room": slug})
    )


def send_session_ended(
    user_id: Any, *, session_key: str | None = None, token_ids: list[int] | None = None
) -> None:
    """Close the user's sockets of that session, of those tokens, or (neither) all of them."""
    event = {"type": "session.ended", "session_key": session_key, "token_ids": token_ids}
    send_on_commit((user_group(user_id), event))


def send_user_changed(user_id: Any) -> None:
    """Ask the user's sockets to check their credentials again (`user.changed`)."""
    send_on_commit((user_group(user_id), {"type": "user.changed"}))


def send_notifications(notifications: Sequence[tuple[Any, int, dict[str, Any]]]) -> None:
    """Push stored notifications (user id, seq, frame) to their users' sockets, each user's
    in seq order. With `seq` and the ready `text`, the layer's fan-out writes them to
    in-sync sockets like a room's messages; a socket behind catches up from the database."""
    send_on_commit(
        *(
            (
                user_group(user_id),
                {
                    "type": "notification.created",
                    "seq": seq,
                    "text": orjson.dumps(frame).decode(),
                },
            )
            for user_id, seq, frame in sorted(notifications, key=lambda n: (n[0], n[1]))
        )
    )


def send_notifications_read(user_id: Any, up_to: int, unread: int) -> None:
    """Tell the user's sockets (those following notifications live) how far they have read.

    Not stored, so EPHEMERAL: a socket that is catching up skips it, and reads the count
    from GET /api/me if it needs it.
    """
    frame = {"type": "notifications_read", "up_to": up_to, "unread": unread}
    event = {"type": "notifications.read", "seq": EPHEMERAL, "text": orjson.dumps(frame).decode()}
    send_on_commit((user_group(user_id), event))


def send_on_commit(*items: Event) -> None:
    """Send the events, in order, once the current transaction commits (at once outside one)."""
    transaction.on_commit(functools.partial(_publish, *items))


def _publish(*items: Event) -> None:
    """Send events, in order, each to its group, in one round trip to Redis."""
    layer = get_channel_layer()
    durable = not all(event.get("seq") == EPHEMERAL for _, event in items)
    try:
        if hasattr(layer, "send_group_events"):
            # The project's layer takes a batch from any thread (realtime/layer.py).
            layer.send_group_events(items, durable=durable)
        else:
            for group, event in items:
                async_to_sync(layer.group_send)(group, event)
    except Exception:
        # What an action committed stays committed; subscribers fill the gap from the
        # database on the next message or after the feed reconnects. A broadcast failure
        # must not fail the action.
        logger.exception("broadcast of %s failed", sorted({group for group, _ in items}))
