"""The /ws/ consumer: authenticate, parse, call an action or a read helper, send frames.

Resume guarantee: a subscription joins the room's group *before* it reads the
room's last_seq, so nothing published after that read can be missed; frames
are sent in seq order and each at most once, because every subscription tracks
the last seq it sent, drops anything at or below it and fills any hole from the
database before it sends the next live message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from realtime import protocol
from realtime.groups import room_group, user_group
from realtime.protocol import Ping, Publish, Subscribe, Unsubscribe
from web.access import aget_room_for_user, alast_seq, amessages_after
from web.actions import do_send_message
from web.errors import ApiError, Unavailable
from web.models import Room

logger = logging.getLogger(__name__)

CLOSE_TOO_LARGE = 1009

send_message = database_sync_to_async(do_send_message)


@dataclass(slots=True)
class Subscription:
    room: Room
    last_sent: int


class ChatConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    async def connect(self) -> None:
        """Called when a WebSocket connection is opened: authenticate, then accept."""
        user = self.scope.get("user")
        self.subs: dict[int, Subscription] = {}
        if user is None or not user.is_authenticated:
            # Closing before accept makes the server answer the handshake with HTTP 403.
            await self.close()
            return
        self.user = user
        await self.channel_layer.group_add(user_group(user.pk), self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        user = getattr(self, "user", None)
        if user is None:
            return
        for room_id in self.subs:
            await self.channel_layer.group_discard(room_group(room_id), self.channel_name)
        await self.channel_layer.group_discard(user_group(user.pk), self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self.send(protocol.error_frame("bad_request", "binary frames are not supported"))
            return
        if _too_large(text_data):
            await self.close(code=CLOSE_TOO_LARGE)
            return
        ref = None
        try:
            command = protocol.parse(text_data)
            ref = command.ref
            if isinstance(command, Publish):
                await self.publish(command)
            elif isinstance(command, Subscribe):
                await self.subscribe(command)
            elif isinstance(command, Unsubscribe):
                await self.unsubscribe(command)
            elif isinstance(command, Ping):
                await self.send(protocol.dumps({"type": "pong", "ref": command.ref}))
        except protocol.ProtocolError as error:
            await self.send(protocol.error_frame(error.code, error.message, error.ref))
        except ApiError as error:
            await self.send(protocol.error_frame(error.code, error.message, ref))
        except DatabaseError:
            logger.warning("database unavailable while handling a frame", exc_info=True)
            err = Unavailable("the message store is unavailable; retry with the same client_msg_id")
            await self.send(protocol.error_frame(err.code, err.message, ref))

    async def publish(self, command: Publish) -> None:
        room = await self._room(command.room)
        sent = await send_message(self.user, room, command.body, command.client_msg_id)
        ack = {
            "type": "ack",
            "ref": command.ref,
            "room": room.slug,
            "seq": sent.message.seq,
            "client_msg_id": sent.message.client_msg_id,
        }
        await self.send(protocol.dumps(ack))

    async def subscribe(self, command: Subscribe) -> None:
        room = await aget_room_for_user(self.user, command.room)
        # Join first, then read last_seq: whatever commits after the read arrives live.
        await self.channel_layer.group_add(room_group(room.pk), self.channel_name)
        sub = Subscription(room, 0)
        self.subs[room.pk] = sub
        try:
            last_seq = await alast_seq(room.pk)
            if command.since is None:
                sub.last_sent = last_seq
            else:
                sub.last_sent = min(command.since, last_seq)
                await self._send_backfill(sub, last_seq)
        except BaseException:
            await self._drop(room.pk)
            raise
        await self.send(
            protocol.dumps(
                {"type": "subscribed", "ref": command.ref, "room": room.slug, "last_seq": last_seq}
            )
        )

    async def unsubscribe(self, command: Unsubscribe) -> None:
        room = next((s.room for s in self.subs.values() if s.room.slug == command.room), None)
        if room is not None:
            await self._drop(room.pk)
        await self.send(
            protocol.dumps({"type": "unsubscribed", "ref": command.ref, "room": command.room})
        )

    # Channel-layer event handlers: named after the event type, they only send.

    async def chat_message(self, event: dict[str, Any]) -> None:
        sub = self.subs.get(event["room_id"])
        seq = event["seq"]
        if sub is None or seq <= sub.last_sent:
            return  # not subscribed, or already sent by the backfill
        if seq > sub.last_sent + 1:
            # Broadcasts from different processes can overtake each other, or one was
            # dropped; everything below a committed seq is already in the database.
            try:
                await self._send_backfill(sub, seq - 1)
            except DatabaseError:
                await self._resync(sub)
                return
        await self.send(event["text"])
        sub.last_sent = seq

    async def room_revoked(self, event: dict[str, Any]) -> None:
        if event["room_id"] in self.subs:
            await self._drop(event["room_id"])
            await self.send(
                protocol.dumps({"type": "unsubscribed", "room": event["room"], "reason": "removed"})
            )

    # Helpers.

    async def _room(self, slug: str) -> Room:
        # A subscribed room was access-checked at subscribe; losing access pushes room.revoked.
        for sub in self.subs.values():
            if sub.room.slug == slug:
                return sub.room
        return await aget_room_for_user(self.user, slug)

    async def _send_backfill(self, sub: Subscription, up_to: int) -> None:
        """Send the messages after sub.last_sent up to seq `up_to`, in order."""
        while sub.last_sent < up_to:
            limit = min(settings.BACKFILL_BATCH, up_to - sub.last_sent)
            frames = await amessages_after(sub.room, sub.last_sent, limit)
            if not frames:
                break
            for frame in frames:
                await self.send(protocol.dumps(frame))
                sub.last_sent = frame["seq"]

    async def _resync(self, sub: Subscription) -> None:
        """Drop a subscription the server cannot keep gap-free; the client resubscribes."""
        await self._drop(sub.room.pk)
        await self.send(
            protocol.dumps({"type": "resync", "room": sub.room.slug, "last_seq": sub.last_sent})
        )

    async def _drop(self, room_id: int) -> None:
        self.subs.pop(room_id, None)
        await self.channel_layer.group_discard(room_group(room_id), self.channel_name)


def _too_large(text: str) -> bool:
    limit: int = settings.WS_MAX_FRAME_BYTES
    # A str has at most 4 UTF-8 bytes per character: only encode when it could matter.
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit)
