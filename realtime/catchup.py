"""One socket following one ordered stream (a room's messages) exactly once and in order.

Live events come through the channel layer's fanout extension (realtime/layer.py);
whatever they did not bring comes from the database.

The resume guarantee: a stream joins its group *before* it reads the last seq,
so nothing committed after that read can be missed. It tracks the last seq it
sent: the fan-out writes only the next seq to an in-sync socket; anything else
(a backfill in progress, a hole, a socket too slow to keep up) makes the stream
catch up here from the database, in order, before the socket goes live again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings
from django.db import DatabaseError

from project import metrics
from realtime import protocol
from realtime.deadlines import db
from realtime.groups import room_group, user_group
from realtime.layer import Subscription
from realtime.tasks import spawn
from realtime.wire import Writer
from web.access import alast_seq, amessages_after, anotification_counts, anotifications_after

if TYPE_CHECKING:  # for hints only: sockets reach models through access helpers and actions
    from web.models import Room

logger = logging.getLogger(__name__)


class Follower(Protocol):
    """What a stream needs of the socket it feeds (ChatConsumer)."""

    writer: Writer
    layer: Any

    async def send(self, text_data: str | None = None) -> None: ...

    async def too_slow(self, stream: Stream) -> None:
        """It could not catch up within SLOW_CLIENT_SECONDS: cut the socket off."""

    async def resync(self, stream: Stream) -> None:
        """The database failed mid catch-up: stop the stream, have the client resubscribe."""


class Stream:
    """A socket's subscription to a group's ordered events, with its database catch-up."""

    __slots__ = ("catch_up", "follower", "sub")

    def __init__(self, follower: Follower, group: str):
        self.follower = follower
        self.sub = Subscription(group, follower.writer, self.behind)
        self.catch_up: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        raise NotImplementedError

    async def last_seq(self) -> int:
        """The newest seq, read fresh from the database."""
        raise NotImplementedError

    async def page(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` frames with seq > `after`, in seq order."""
        raise NotImplementedError

    def resync_frame(self) -> dict[str, Any]:
        """What tells the client to subscribe again with `since` (see Follower.resync)."""
        return {"type": "resync", "room": self.name, "last_seq": self.sub.last_sent}

    async def start(self, since: int | None) -> int:
        """Join, then send what came after `since` (None: nothing old); the last seq."""
        # Join first, then read last_seq: whatever commits after the read is seen.
        await self.follower.layer.join(self.sub)
        last_seq = await db(self.last_seq())
        self.sub.last_sent = last_seq if since is None else min(since, last_seq)
        await self._backfill(last_seq)
        return last_seq

    async def go_live(self) -> None:
        """Send what arrived during the start, then let the fan-out write to the socket."""
        await self._catch_up(check_database=False)

    def stop(self) -> None:
        self.follower.layer.leave(self.sub)
        if self.catch_up is not None and self.catch_up is not asyncio.current_task():
            self.catch_up.cancel()

    def behind(self, sub: Subscription) -> None:
        """The fan-out stopped writing to the socket (a hole, or too slow): catch up."""
        self.catch_up = spawn(self._catch_up_or_resync(), name="catch up")

    async def _catch_up_or_resync(self) -> None:
        try:
            async with asyncio.timeout(settings.SLOW_CLIENT_SECONDS):
                await self._catch_up(check_database=True)
        except TimeoutError:
            # Its buffer stayed full: cut it off rather than fall ever further behind. The
            # client reconnects and resumes with `since`, losing nothing.
            logger.info("closing a socket too slow to keep up with %s", self.name)
            await self.follower.too_slow(self)
        except DatabaseError:
            logger.warning("cannot catch up %s; asking the client to resync", self.name)
            await self.follower.resync(self)

    async def _catch_up(self, *, check_database: bool) -> None:
        """Send from the database what the fan-out did not, then go live."""
        sub = self.sub
        if check_database:
            # After a lost feed nothing says how far behind we are; the database does.
            sub.max_seen = max(sub.max_seen, await db(self.last_seq()))
        while True:
            if sub.recheck:
                sub.recheck = False
                sub.max_seen = max(sub.max_seen, await db(self.last_seq()))
            if sub.max_seen <= sub.last_sent and not sub.recheck:
                break
            before = sub.last_sent
            await self._backfill(sub.max_seen)
            if sub.last_sent == before and sub.max_seen > sub.last_sent:
                raise DatabaseError(f"seq {before + 1} is missing from the database")
        # No await between the check and this line: nothing can slip past.
        sub.live = True

    async def _backfill(self, up_to: int) -> None:
        """Send the frames after sub.last_sent up to seq `up_to`, in order."""
        sub = self.sub
        if sub.last_sent < up_to:
            metrics.CATCHUPS.inc()
        while sub.last_sent < up_to:
            limit = min(settings.BACKFILL_BATCH, up_to - sub.last_sent)
            frames = await db(self.page(sub.last_sent, limit))
            if not frames:
                break
            for frame in frames:
                # An ASGI send waits while the socket's buffer is full: a slow reader
                # paces its own catch-up, and nothing piles up in memory.
                await self.follower.send(protocol.dumps(frame))
                sub.last_sent = frame["seq"]


class RoomStream(Stream):
    """A room's messages."""

    __slots__ = ("room",)

    def __init__(self, follower: Follower, room: Room):
        super().__init__(follower, room_group(room.pk))
        self.room = room

    @property
    def name(self) -> str:
        return self.room.slug

    async def last_seq(self) -> int:
        return await alast_seq(self.room.pk)

    async def page(self, after: int, limit: int) -> list[dict[str, Any]]:
        return await amessages_after(self.room, after, limit)


class NotificationStream(Stream):
    """The user's notifications, on the user's group: followed by every socket from connect."""

    __slots__ = ("user_id",)

    def __init__(self, follower: Follower, user_id: Any):
        super().__init__(follower, user_group(user_id))
        self.user_id = user_id

    @property
    def name(self) -> str:
        return "notifications"

    async def last_seq(self) -> int:
        last_seq, _unread = await anotification_counts(self.user_id)
        return last_seq

    async def page(self, after: int, limit: int) -> list[dict[str, Any]]:
        return await anotifications_after(self.user_id, after, limit)

    def resync_frame(self) -> dict[str, Any]:
        return {"type": "resync", "notifications": True, "last_seq": self.sub.last_sent}

    async def follow(self, since: int | None, *, ack: bool = False, ref: str | None = None) -> None:
        """Start (see Stream.start), answer `notifications_subscribed` if asked, go live."""
        try:
            last_seq = await self.start(since)
        except BaseException:
            self.stop()
            raise
        if ack:
            frame = {"type": "notifications_subscribed", "ref": ref, "last_seq": last_seq}
            await self.follower.send(protocol.dumps(frame))
        await self.go_live()
