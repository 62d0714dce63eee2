"""Per-process fan-out: the hot path, and the app's channel layer.

Every process holds one subscription per room that has local subscribers, and
one per user with local sockets (Redis pub/sub channels, or nothing with the
in-memory default), however many sockets watch them. A published message
arrives once per process, is encoded once, and is written to each in-sync
socket without a coroutine per recipient (realtime/wire.py).

A subscription that is not in sync (still backfilling, or it saw a hole) is
not written to; it records the highest seq it has seen and its consumer
catches up from the database (realtime/consumers.py), which is what keeps
every socket gap-free and in order. When the Redis feed (realtime/feeds.py)
is lost, it reconnects, resubscribes, and every subscription checks the
database.

Why not Channels' Redis layers: RedisChannelLayer.group_send does several round
trips and works per member, and every consumer holds a channel with its own
receive task and queue; RedisPubSubChannelLayer decodes each message once per
member and has unbounded queues. Neither resubscribes a socket's groups after
Redis restarts. See docs/performance.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from django.conf import settings

from realtime.feeds import ROOM_PREFIX, USER_PREFIX, Backend, LocalBackend, RedisBackend
from realtime.wire import Writer, text_frame

logger = logging.getLogger(__name__)

EPHEMERAL = 0  # the seq of events that are not stored messages
# Publishes commit in seq order, but their broadcasts leave from different threads and
# processes and can overtake each other. A room's feed holds an early seq this long for the
# ones before it, so sockets see order restored once per process, not a hole each.
REORDER_WAIT = 0.05
REORDER_MAX_HELD = 1000
# Sent to every socket of the process after the feed was lost (not published anywhere).
RECHECK_ROOMS: dict[str, Any] = {"type": "rooms.recheck"}


class Subscription:
    """One socket's view of one room."""

    __slots__ = ("last_sent", "live", "max_seen", "on_behind", "recheck", "room_id", "writer")

    def __init__(self, room_id: int, writer: Writer, on_behind: Callable[[Subscription], None]):
        self.room_id = room_id
        self.writer = writer
        # Called (synchronously) when this subscription needs its consumer to catch up.
        self.on_behind = on_behind
        self.last_sent = 0
        self.max_seen = 0
        self.live = False
        # The feed was interrupted while this was catching up: ask the database once more.
        self.recheck = False


class RoomFeed:
    """Restores seq order of one room's broadcasts in this process."""

    __slots__ = ("held", "next_seq", "timer")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.held: dict[int, str] = {}
        self.timer: asyncio.TimerHandle | None = None


class UserListener(Protocol):
    def on_user_event(self, event: dict[str, Any]) -> None:
        """A user event (session.ended, room.revoked) for this socket; must not block."""


class Fanout:
    """The process's table of room -> local subscriptions and user -> local sockets."""

    def __init__(self) -> None:
        self.rooms: dict[int, dict[Subscription, None]] = {}
        self.feeds: dict[int, RoomFeed] = {}
        self.users: dict[Any, dict[UserListener, None]] = {}
        self.backend: Backend = RedisBackend(self) if settings.REDIS_URL else LocalBackend(self)

    async def join(self, sub: Subscription) -> None:
        """Add a subscription; returns once messages published from now on will reach it."""
        subs = self.rooms.setdefault(sub.room_id, {})
        subs[sub] = None
        self.feeds.setdefault(sub.room_id, RoomFeed())
        await self.backend.subscribe(ROOM_PREFIX + str(sub.room_id))

    def leave(self, sub: Subscription) -> None:
        subs = self.rooms.get(sub.room_id)
        if subs is None or sub not in subs:
            return
        del subs[sub]
        if not subs:
            del self.rooms[sub.room_id]
            feed = self.feeds.pop(sub.room_id, None)
            if feed is not None and feed.timer is not None:
                feed.timer.cancel()
            self.backend.unsubscribe(ROOM_PREFIX + str(sub.room_id))

    async def join_user(self, user_id: Any, listener: UserListener) -> None:
        self.users.setdefault(user_id, {})[listener] = None
        await self.backend.subscribe(USER_PREFIX + str(user_id))

    def leave_user(self, user_id: Any, listener: UserListener) -> None:
        listeners = self.users.get(user_id)
        if listeners is None or listener not in listeners:
            return
        del listeners[listener]
        if not listeners:
            del self.users[user_id]
            self.backend.unsubscribe(USER_PREFIX + str(user_id))

    def deliver(self, channel: str, data: bytes) -> None:
        """One message from the feed."""
        if channel.startswith(ROOM_PREFIX):
            room_id, seq, text = _decode(data)
            self.dispatch(room_id, seq, text)
        elif channel.startswith(USER_PREFIX):
            listeners = self.users.get(_user_key(channel[len(USER_PREFIX) :]))
            if listeners:
                event = orjson.loads(data)
                for listener in list(listeners):
                    listener.on_user_event(event)

    def dispatch(self, room_id: int, seq: int, text: str) -> None:
        """Deliver one published message, in seq order, to the room's subscribers here."""
        feed = self.feeds.get(room_id)
        if feed is None or seq == EPHEMERAL:
            self._deliver(room_id, seq, text)
            return
        if feed.next_seq is not None and seq > feed.next_seq:
            feed.held[seq] = text
            if len(feed.held) > REORDER_MAX_HELD:
                self._flush(room_id)
            elif feed.timer is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    self._flush(room_id)
                else:
                    feed.timer = loop.call_later(REORDER_WAIT, self._flush, room_id)
            return
        self._deliver(room_id, seq, text)
        if feed.next_seq is None or seq >= feed.next_seq:
            feed.next_seq = seq + 1
        while feed.next_seq in feed.held:
            self._deliver(room_id, feed.next_seq, feed.held.pop(feed.next_seq))
            feed.next_seq += 1
        if not feed.held and feed.timer is not None:
            feed.timer.cancel()
            feed.timer = None

    def _flush(self, room_id: int) -> None:
        """The missing seqs did not come in time: deliver what is held; sockets fill holes."""
        feed = self.feeds.get(room_id)
        if feed is None:
            return
        if feed.timer is not None:
            feed.timer.cancel()
            feed.timer = None
        for seq in sorted(feed.held):
            self._deliver(room_id, seq, feed.held[seq])
            feed.next_seq = seq + 1
        feed.held.clear()

    def _deliver(self, room_id: int, seq: int, text: str) -> None:
        subs = self.rooms.get(room_id)
        if not subs:
            return
        frame = text_frame(text)
        if seq == EPHEMERAL:
            # Typing and the like: not stored, no seq, skipped by sockets not in sync.
            for sub in subs:
                if sub.live:
                    sub.writer.write(frame, text)
            return
        for sub in subs:
            if seq <= sub.last_sent:
                continue  # already sent (by a backfill)
            if sub.live and seq == sub.last_sent + 1 and sub.writer.write(frame, text):
                sub.last_sent = seq
                continue
            # Not written: still backfilling, a hole before it, or the socket is too slow.
            if seq > sub.max_seen:
                sub.max_seen = seq
            if sub.live:
                sub.live = False
                sub.on_behind(sub)

    def resync_all(self) -> None:
        """After the feed was interrupted: every subscription checks the database for gaps,
        and every socket its room access (a `room.revoked` may have been lost meanwhile)."""
        for subs in self.rooms.values():
            for sub in list(subs):
                if sub.live:
                    sub.live = False
                    sub.on_behind(sub)
                else:
                    sub.recheck = True
        for listeners in self.users.values():
            for listener in list(listeners):
                listener.on_user_event(RECHECK_ROOMS)


def _encode(room_id: int, seq: int, text: str) -> bytes:
    # The seq up front, then the ready frame text: readers never parse the message.
    return f"{room_id} {seq} ".encode() + text.encode()


def _decode(data: bytes) -> tuple[int, int, str]:
    room_id, seq, text = data.split(b" ", 2)
    return int(room_id), int(seq), text.decode()


def _user_key(raw: str) -> Any:
    return int(raw) if raw.isdigit() else raw


_fanout: Fanout | None = None


def get_fanout() -> Fanout:
    """The process's fan-out table, made on first use (settings are read then)."""
    global _fanout
    if _fanout is None:
        _fanout = Fanout()
    return _fanout


def reset_fanout() -> None:
    """Forget the table (tests that change REDIS_URL or start a new event loop)."""
    global _fanout
    _fanout = None


def publish_many(messages: list[tuple[int, int, str]]) -> None:
    """Hand committed messages (room id, seq, frame text) to every process's fan-out, each
    room's in order (realtime/events.py calls this). Seq EPHEMERAL marks a typing notice:
    one that Redis does not take is dropped, not retried."""
    get_fanout().backend.publish(
        *(
            (ROOM_PREFIX + str(room_id), _encode(room_id, seq, text))
            for room_id, seq, text in messages
        ),
        durable=all(seq != EPHEMERAL for _, seq, _ in messages),
    )


def publish(room_id: int, seq: int, text: str) -> None:
    """Hand one room event (a message or, with seq EPHEMERAL, a typing notice) to the fan-out."""
    publish_many([(room_id, seq, text)])


def publish_user(user_id: Any, event: dict[str, Any]) -> None:
    """Hand a user event to every process's sockets of that user."""
    get_fanout().backend.publish((USER_PREFIX + str(user_id), orjson.dumps(event)))
