"""The /ws/ consumer: authenticate, parse, call an action or a read helper, send frames.

Subscriptions follow their room through realtime/catchup.py (the resume
guarantee lives there); events of the socket's user arrive through the channel
layer's `listen` and are handled by realtime/user_events.py's methods.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import structlog
from asgiref.sync import sync_to_async
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from project import logs, metrics, redis_config
from realtime import drain, limits, protocol, recheck
from realtime.catchup import NotificationStream, RoomStream, Stream
from realtime.deadlines import db, sweep_connections
from realtime.groups import room_group, user_group
from realtime.presence import get_presence, new_origin, presence_frame, unread_frame
from realtime.process import get_process
from realtime.protocol import (
    COMMANDS,
    Command,
    Ping,
    Publish,
    Read,
    Subscribe,
    SubscribeNotifications,
    Typing,
    Unsubscribe,
)
from realtime.publishing import Publishes
from realtime.room_checks import check_room
from realtime.tasks import spawn
from realtime.user_events import UserEvents
from realtime.wire import writer_for
from web.actions import do_read, do_typing
from web.errors import ApiError, RateLimited

if TYPE_CHECKING:  # for hints only: sockets reach models through access helpers and actions
    from web.models import Room

logger = logging.getLogger(__name__)
log = structlog.get_logger(__name__)

CLOSE_POLICY = 1008  # flooding, or too many connections
CLOSE_TOO_LARGE = 1009
CLOSE_TRY_AGAIN_LATER = 1013  # this process holds MAX_CONNECTIONS_PER_PROCESS sockets already
CLOSE_TOO_SLOW = 4002  # could not keep up; reconnect and resume with `since`
CLOSE_SERVICE_RESTART = 1012  # the process is draining; reconnect (elsewhere) with `since`

# Not a database call: a blocking Redis PUBLISH, so off the event loop.
send_typing = sync_to_async(do_typing, thread_sensitive=False)
mark_read = database_sync_to_async(do_read)

# A backing service failing: the frame is answered `unavailable`, to be sent again.
SERVICE_ERRORS = (DatabaseError, *redis_config.ERRORS, TimeoutError, ConnectionError)

# Frames received by type, each label looked up once; binary, too large or unparsable: invalid.
RECEIVED = {
    kind: metrics.WS_FRAMES_RECEIVED.labels(kind.__struct_config__.tag) for kind in COMMANDS
}
INVALID = metrics.WS_FRAMES_RECEIVED.labels("invalid")


class ChatConsumer(Publishes, UserEvents, AsyncWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    # Events reach sockets through the channel layer's fanout extension (realtime/layer.py),
    # not a channel per consumer: __call__ below reads no channel.

    # What connect() sets, in slots: Channels' base classes give every instance a __dict__,
    # which resized under all of these took about 830 bytes of each idle socket.
    __slots__ = (
        "closed",
        "counted",
        "layer",
        "limits",
        "notifications",
        "origin",
        "rooms",
        "session_key",
        "subs",
        "token_id",
        "user",
        "writer",
    )

    # Handling a frame; the drain waits for its answer, and for every publish's (`acks`).
    busy = False
    restart_due = False  # the drain asked while busy: close once the frames are answered

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """AsyncConsumer.__call__ for a consumer with no channel layer, one message at a time.

        Channels reads `receive` in a task of its own and waits on it with asyncio.wait
        (it can have two sources); with one source that is about 2 KB per idle socket
        for nothing.
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        logs.bind_connection_id(scope)  # on every log line of this connection
        try:
            while True:
                message = await receive()
                self.busy = True
                try:
                    await self.dispatch(message)
                finally:
                    self.busy = False
                if self.restart_due:
                    self.restart()
                if self.acks is not None and len(self.acks) >= settings.SOCKET_PUBLISHES_IN_FLIGHT:
                    # Read no more of this socket until one of its publishes is answered.
                    await asyncio.wait(self.acks, return_when=asyncio.FIRST_COMPLETED)
        except StopConsumer:
            pass
        finally:
            # Channels skips disconnect() when the app raises; never leak what connect took.
            self._release()

    async def connect(self) -> None:
        """Called when a WebSocket connection is opened: authenticate, then accept."""
        if get_process().draining:
            await drain.refuse(self.scope, self.base_send)  # HTTP 503: try another pod
            return
        user = self.scope.get("user")
        self.subs: dict[str, RoomStream] = {}  # by group
        # Rooms this socket was let into, by slug: publishing is not a query per message.
        self.rooms: dict[str, Room] = {}
        self.counted = False
        self.notifications: NotificationStream | None = None
        # Set once the server closes the socket: frames still arriving are not acted on.
        self.closed = False
        if user is None or not user.is_authenticated:
            # Closing before accept makes the server answer the handshake with HTTP 403.
            await self.close()
            return
        self.user = user
        self.session_key = self.scope.get("session_key")
        self.token_id = self.scope.get("token_id")
        await self.accept()
        if limits.process_full():  # accepted only to say "try again later" (another pod)
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        self.writer = writer_for(self.base_send)
        get_process().sockets[self] = None  # the drain closes it (realtime/drain.py)
        metrics.WS_CONNECTIONS.set(len(get_process().sockets))
        user_state = await limits.connect(user.pk)
        if user_state is None:
            await self.send(
                protocol.error_frame("rate_limited", "too many connections for this user")
            )
            await self.close(code=CLOSE_POLICY)
            return
        self.limits = limits.ConnectionLimits(user_state)
        self.counted = True
        self.layer = get_channel_layer()
        try:
            await self.layer.listen(user_group(user.pk), self)
            # Live from now, with no subscribe: one query (the newest seq).
            self.notifications = NotificationStream(self, user.pk)
            await self.notifications.follow(None)
        except Exception:
            logger.warning("cannot follow user events; closing the socket", exc_info=True)
            await self.close(code=1011)
            return
        recheck.watch()
        log.info("websocket_opened", user_id=user.pk)

    async def disconnect(self, code: int) -> None:
        self._release()
        log.info("websocket_closed", code=code)

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        self._flush()
        metrics.WS_FRAMES_SENT.inc()  # the fan-out counts its own (realtime/layer.py)
        await super().send(text_data, bytes_data, close)

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.closed = True
        self._flush()
        await super().close(code, reason)

    def _flush(self) -> None:
        # Frames the fan-out queued for this socket in this turn go out before anything else.
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.flush()

    def _release(self) -> None:
        get_process().sockets.pop(self, None)
        metrics.WS_CONNECTIONS.set(len(get_process().sockets))
        for group in list(getattr(self, "subs", {})):
            self._drop(group)
        notifications = getattr(self, "notifications", None)
        if notifications is not None:
            notifications.stop()
        if getattr(self, "counted", False):
            self.counted = False
            limits.disconnect(self.user.pk)
            self.layer.unlisten(user_group(self.user.pk), self)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Run the handler for a message, without Channels' per-message connection sweep.

        Channels awaits aclose_old_connections() (a hop to the database thread) before
        every message. Publishes look after their own connection (realtime/publisher.py), and
        the reads' thread sweeps only after a database error (see receive), so the hot
        path skips it.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closed:
            return  # closing (logged out, too slow...): nothing more it sends counts
        if text_data is None:
            INVALID.inc()
            await self.send(protocol.error_frame("bad_request", "binary frames are not supported"))
            return
        if protocol.too_large(text_data, settings.WS_MAX_FRAME_BYTES):
            INVALID.inc()
            await self.close(code=CLOSE_TOO_LARGE)
            return
        ref = None
        command: Command | None = None
        try:
            command = protocol.parse(text_data)
            RECEIVED[type(command)].inc()
            ref = command.ref
            if isinstance(command, Publish):
                await self.publish(command)
            elif isinstance(command, Subscribe):
                await self.subscribe(command)
            elif isinstance(command, Unsubscribe):
                await self.unsubscribe(command)
            elif isinstance(command, Typing):
                await self.typing(command)
            elif isinstance(command, Read):
                await self.read(command)
            elif isinstance(command, SubscribeNotifications):
                await self.subscribe_notifications(command)
            elif isinstance(command, Ping):
                await self.send(protocol.dumps({"type": "pong", "ref": command.ref}))
        except Exception as error:  # _refuse re-raises what is not a refusal
            await self._refuse(error, command, ref)

    async def _refuse(self, error: Exception, command: Command | None, ref: str | None) -> None:
        """Answer a frame that failed with the error frame its failure calls for; anything
        that is not a refusal nor a backing service failing is a bug, raised again."""
        if isinstance(error, protocol.ProtocolError):
            if command is None:
                INVALID.inc()
            await self.send(protocol.error_frame(error.code, error.message, error.ref))
        elif isinstance(error, RateLimited):
            await self.send(protocol.error_frame(error.code, error.message, ref))
            if not self.limits.strike():
                await self.close(code=CLOSE_POLICY)
        elif isinstance(error, ApiError):
            await self.send(protocol.error_frame(error.code, error.message, ref))
        elif isinstance(error, SERVICE_ERRORS):
            logger.warning("a backing service failed while handling a frame", exc_info=error)
            err = protocol.unavailable(command, error)
            await self.send(protocol.error_frame(err.code, err.message, ref))
            if isinstance(error, DatabaseError):
                sweep_connections()
        else:
            raise error

    async def subscribe(self, command: Subscribe) -> None:
        room = self._remember(await db(check_room(self.user, command.room)))
        group = room_group(room.pk)
        self._drop(group)  # subscribing again restarts from the new `since`
        stream = self.subs[group] = RoomStream(self, room)
        try:
            last_seq = await stream.start(command.since)
        except BaseException:
            self._drop(group)
            raise
        await self.send(
            protocol.dumps(
                {"type": "subscribed", "ref": command.ref, "room": room.slug, "last_seq": last_seq}
            )
        )
        await stream.go_live()
        # After going live, so no diff sent after it is missed; one sent before it is in it.
        online = await get_presence().enter(self, room.pk, room.slug, self.user.get_username())
        await self.send(protocol.dumps(presence_frame(room.slug, online)))

    async def typing(self, command: Typing) -> None:
        room = await self._room(command.room)
        # Extra notices are dropped, not refused: clients send one per burst of keystrokes.
        if await self.limits.allow_typing() and await limits.allow_typing_notice(
            self.user.pk, room.pk
        ):
            await send_typing(self.user, room)

    async def unsubscribe(self, command: Unsubscribe) -> None:
        stream = next((e for e in self.subs.values() if e.room.slug == command.room), None)
        if stream is not None:
            self._drop(stream.sub.group)
        await self.send(
            protocol.dumps({"type": "unsubscribed", "ref": command.ref, "room": command.room})
        )

    async def read(self, command: Read) -> None:
        """Move the read marker; this socket's answer carries the ref, the user's other
        sockets get the same `unread` frame through `unread_changed`."""
        if getattr(self, "origin", None) is None:
            self.origin = new_origin()
        room = await self._room(command.room)
        state = await db(mark_read(self.user, room, command.seq, self.origin))
        await self.send(
            protocol.dumps(unread_frame(state.room, state.unread, state.last_read_seq, command.ref))
        )

    async def subscribe_notifications(self, command: SubscribeNotifications) -> None:
        if self.notifications is not None:
            self.notifications.stop()  # restarts from the new `since`
        self.notifications = NotificationStream(self, self.user.pk)
        await self.notifications.follow(command.since, ack=True, ref=command.ref)

    # What the drain (realtime/drain.py) asks of its socket.

    def restart(self) -> None:
        """The process is draining: close with 1012 now, or once the frame in hand is answered
        (a publish received before the close is stored and acked, or refused, never half-done).
        """
        if self.busy or self.acks:
            self.restart_due = True
            return
        self.restart_due = False
        if self.closed:
            return
        self.closed = True  # frames read from now on are not acted on; the client resends them
        self._release()  # nothing more from the fan-out: `since` resumes after what it got
        spawn(
            self.close(code=CLOSE_SERVICE_RESTART, reason="restarting; resume with since"),
            name="drain close",
        )

    # What a stream (realtime/catchup.py) asks of its socket.

    async def too_slow(self, stream: Stream) -> None:
        metrics.SLOW_CONSUMERS.inc()
        self.closed = True  # nothing it sends in the close grace period counts
        self._release()
        if not self.writer.close_now(CLOSE_TOO_SLOW, "too slow; resume with since"):
            await self.close(code=CLOSE_TOO_SLOW)

    async def resync(self, stream: Stream) -> None:
        """Stop following a stream and tell the client to subscribe again with `since`."""
        metrics.RESYNCS.inc()
        self._drop(stream.sub.group)
        stream.stop()  # the notification stream is not in subs
        await self.send(protocol.dumps(stream.resync_frame()))

    # Helpers.

    async def _room(self, slug: str) -> Room:
        # Access is checked once per socket and room; losing it pushes room.revoked.
        room = self.rooms.get(slug)
        if room is None:
            room = self._remember(await db(check_room(self.user, slug)))
        return room

    def _remember(self, room: Room) -> Room:
        if room.slug not in self.rooms and len(self.rooms) >= settings.SOCKET_ROOMS_REMEMBERED:
            del self.rooms[next(iter(self.rooms))]
        self.rooms[room.slug] = room
        return room

    def _drop(self, group: str) -> None:
        stream = self.subs.pop(group, None)
        if stream is not None:
            stream.stop()
            get_presence().exit(self, stream.room.pk, self.user.get_username())
