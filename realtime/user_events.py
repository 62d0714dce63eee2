"""The chat consumer's handlers for its user's events (realtime/consumers.py mixes them in).

Events of the socket's user (a room revoked, the feed resumed, the read marker moved, the
session ended, the account changed) arrive through the channel layer's `listen`; each is
handled by the method named after its type, and they only send frames or close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from channels.consumer import get_handler_name
from django.db import DatabaseError

from realtime import protocol
from realtime.auth import still_signed_in
from realtime.deadlines import db
from realtime.groups import room_group
from realtime.presence import unread_frame
from realtime.tasks import spawn
from web.access import aget_room_for_user
from web.errors import Forbidden, NotFound

if TYPE_CHECKING:
    from realtime.catchup import RoomStream, Stream
    from web.models import Room

CLOSE_SESSION_ENDED = 4001  # logged out, deactivated, or the token was revoked


class UserEvents:
    """What ChatConsumer does with its user's events; the state is the consumer's."""

    if TYPE_CHECKING:  # set by ChatConsumer.connect
        user: Any
        token_id: Any
        session_key: str | None
        closed: bool
        rooms: dict[str, Room]
        subs: dict[str, RoomStream]

        async def send(
            self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
        ) -> None: ...
        async def close(self, code: int | None = None, reason: str | None = None) -> None: ...
        async def resync(self, stream: Stream) -> None: ...
        def _drop(self, group: str) -> None: ...

    def on_group_event(self, event: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(event), None)
        if handler is not None:
            spawn(handler(event), name=f"user event {event['type']}")

    async def room_revoked(self, event: dict[str, Any]) -> None:
        self.rooms.pop(event["room"], None)
        group = room_group(event["room_id"])
        if group in self.subs:
            self._drop(group)
            await self.send(
                protocol.dumps({"type": "unsubscribed", "room": event["room"], "reason": "removed"})
            )

    async def feed_resumed(self, event: dict[str, Any]) -> None:
        """The feed was lost for a while: forget checked rooms, and check private ones again."""
        self.rooms.clear()
        for stream in [e for e in self.subs.values() if e.room.private]:
            try:
                await db(aget_room_for_user(self.user, stream.room.slug))
            except (Forbidden, NotFound):
                await self.room_revoked({"room_id": stream.room.pk, "room": stream.room.slug})
            except DatabaseError:
                # Cannot tell now: stop sending it; the client resubscribes (access checked).
                await self.resync(stream)

    async def unread_changed(self, event: dict[str, Any]) -> None:
        if event.get("origin") is None or event["origin"] != getattr(self, "origin", None):
            frame = unread_frame(event["room"], event["count"], event["last_read_seq"])
            await self.send(protocol.dumps(frame))

    async def session_ended(self, event: dict[str, Any]) -> None:
        session_key, token_ids = event.get("session_key"), event.get("token_ids")
        if session_key is not None and session_key != self.session_key:
            return
        if token_ids is not None and self.token_id not in token_ids:
            return
        await self.close(code=CLOSE_SESSION_ENDED)

    async def user_changed(self, event: dict[str, Any]) -> None:
        """The account changed (password, active flag): close unless still signed in.

        A session socket whose session no longer matches (the password changed) closes; a
        token socket stays while its token and user are good.
        """
        try:
            signed_in = await db(still_signed_in(self.user.pk, self.token_id, self.session_key))
        except DatabaseError:
            signed_in = False  # cannot tell: close, and the reconnect is checked afresh
        if not signed_in and not self.closed:
            await self.close(code=CLOSE_SESSION_ENDED)
