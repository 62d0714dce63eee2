"""Per-process fan-out: the hot path, and the app's channel layer.

Every process holds one subscription per room that has local subscribers, and
one per user with local sockets (Redis pub/sub channels, or nothing with the
in-memory default), however many sockets watch them. A published message
arrives once per process, is encoded once, and is written to each in-sync
socket without a coroutine per recipient (realtime/wire.py).

A subscription that is not in sync (still backfilling, or it saw a hole) is
not written to; it records the highest seq it has seen and its consumer
catches up from the database (realtime/consumers.py), which is what keeps
every socket gap-free and in order. When the Redis feed is lost, it
reconnects, resubscribes, and every subscription checks the database.

Why not Channels' Redis layers: RedisChannelLayer.group_send does several round
trips and works per member, and every consumer holds a channel with its own
receive task and queue; RedisPubSubChannelLayer decodes each message once per
member and has unbounded queues. Neither resubscribes a socket's groups after
Redis restarts. See docs/performance.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from django.conf import settings

from realtime.wire import Writer, text_frame

logger = logging.getLogger(__name__)

ROOM_PREFIX = "chat:room:"
USER_PREFIX = "chat:user:"
KEEPALIVE = "chat:keepalive"
EPHEMERAL = 0  # the seq of events that are not stored messages
JOIN_TIMEOUT = 5.0
# Publishes commit in seq order, but their broadcasts leave from different threads and
# processes and can overtake each other. A room's feed holds an early seq this long for the
# ones before it, so sockets see order restored once per process, not a hole each.
REORDER_WAIT = 0.05
REORDER_MAX_HELD = 1000


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
        """After the feed was interrupted: every subscription checks the database for gaps."""
        for subs in self.rooms.values():
            for sub in list(subs):
                if sub.live:
                    sub.live = False
                    sub.on_behind(sub)
                else:
                    sub.recheck = True


class Backend:
    def __init__(self, fanout: Fanout):
        self.fanout = fanout

    async def subscribe(self, channel: str) -> None:
        raise NotImplementedError

    def unsubscribe(self, channel: str) -> None:
        raise NotImplementedError

    def publish(self, channel: str, data: bytes) -> None:
        raise NotImplementedError


class LocalBackend(Backend):
    """One process, no Redis: publishes are handed to this process's event loop."""

    def __init__(self, fanout: Fanout):
        super().__init__(fanout)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def subscribe(self, channel: str) -> None:
        self.loop = asyncio.get_running_loop()

    def unsubscribe(self, channel: str) -> None:
        pass

    def publish(self, channel: str, data: bytes) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return  # nobody in this process has ever subscribed
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.fanout.deliver(channel, data)
        else:
            # An empty context: the caller's (a sync_to_async thread's) must not leak in.
            loop.call_soon_threadsafe(
                self.fanout.deliver, channel, data, context=contextvars.Context()
            )


class RedisBackend(Backend):
    """One Redis pub/sub connection and reader task per process."""

    def __init__(self, fanout: Fanout):
        super().__init__(fanout)
        self.pubsub: Any = None
        self.reader: asyncio.Task[None] | None = None
        # channel -> resolved once Redis confirmed the SUBSCRIBE on the current connection
        self.confirmed: dict[str, asyncio.Future[None]] = {}
        self.lock = asyncio.Lock()
        self._publisher: Any = None
        self._publisher_lock = threading.Lock()

    def _wanted(self) -> list[str]:
        rooms = [ROOM_PREFIX + str(room_id) for room_id in self.fanout.rooms]
        users = [USER_PREFIX + str(user_id) for user_id in self.fanout.users]
        # A pub/sub connection with no subscription stops being read: keep one always.
        return [KEEPALIVE, *rooms, *users]

    async def _connect(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(
            str(settings.REDIS_URL),
            socket_connect_timeout=5,
            socket_timeout=15,
            socket_keepalive=True,
            # A PING when the feed has been quiet this long: a dead server shows up.
            health_check_interval=10,
        )
        self.pubsub = client.pubsub()
        loop = asyncio.get_running_loop()
        channels = self._wanted()
        for channel in channels:
            # Keep a future a joining socket already waits on; it resolves on this connection.
            waiter = self.confirmed.get(channel)
            if waiter is None or waiter.done():
                self.confirmed[channel] = loop.create_future()
        await self.pubsub.subscribe(*channels)

    async def subscribe(self, channel: str) -> None:
        async with self.lock:
            if self.reader is None or self.reader.done():
                await self._connect()
                self.reader = asyncio.create_task(self._read(), context=contextvars.Context())
            waiter = self.confirmed.get(channel)
            if waiter is None:
                waiter = self.confirmed[channel] = asyncio.get_running_loop().create_future()
                await self.pubsub.subscribe(channel)
        # Redis confirms a SUBSCRIBE in order on the same connection: after this, every
        # later PUBLISH to the channel reaches the reader. During a reconnect this waits
        # for the new connection's confirmation, up to JOIN_TIMEOUT.
        await asyncio.wait_for(asyncio.shield(waiter), timeout=JOIN_TIMEOUT)

    def unsubscribe(self, channel: str) -> None:
        task = asyncio.ensure_future(self._unsubscribe(channel))
        task.add_done_callback(_ignore_result)

    async def _unsubscribe(self, channel: str) -> None:
        # Under the lock, and only if nobody joined again meanwhile: a SUBSCRIBE and
        # an UNSUBSCRIBE for one channel never cross.
        async with self.lock:
            if channel in self._wanted() or self.pubsub is None:
                return
            self.confirmed.pop(channel, None)
            await self.pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        backoff = 0.1
        while True:
            try:
                while True:
                    # Short waits rather than one endless read, so health checks run.
                    item = await self.pubsub.get_message(timeout=1.0)
                    if item is not None:
                        backoff = 0.1
                        self._handle(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("redis fan-out feed lost; reconnecting", exc_info=True)
            # Reconnect and resubscribe everything, then let every socket fill what it missed.
            while True:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                try:
                    await self._reconnect()
                    break
                except Exception:
                    logger.warning("redis fan-out reconnect failed; retrying", exc_info=True)
            self.fanout.resync_all()

    async def _reconnect(self) -> None:
        async with self.lock:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
            # Every channel needs a fresh confirmation on the new connection.
            for channel, waiter in list(self.confirmed.items()):
                if waiter.done():
                    del self.confirmed[channel]
            await self._connect()

    def _handle(self, item: dict[str, Any]) -> None:
        kind = item["type"]
        channel = item["channel"].decode()
        if kind == "message":
            self.fanout.deliver(channel, item["data"])
        elif kind == "subscribe":
            waiter = self.confirmed.get(channel)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def publish(self, channel: str, data: bytes) -> None:
        """Called from actions' on_commit (any thread): one PUBLISH per message."""
        with self._publisher_lock:
            if self._publisher is None:
                import redis

                self._publisher = redis.Redis.from_url(
                    str(settings.REDIS_URL),
                    socket_connect_timeout=2,
                    socket_timeout=2,
                    socket_keepalive=True,
                    # Pooled connections the server closed (idle timeout, restart) are
                    # noticed and reopened instead of failing the next publish.
                    health_check_interval=10,
                )
        self._publisher.publish(channel, data)


def _encode(room_id: int, seq: int, text: str) -> bytes:
    # The seq up front, then the ready frame text: readers never parse the message.
    return f"{room_id} {seq} ".encode() + text.encode()


def _decode(data: bytes) -> tuple[int, int, str]:
    room_id, seq, text = data.split(b" ", 2)
    return int(room_id), int(seq), text.decode()


def _user_key(raw: str) -> Any:
    return int(raw) if raw.isdigit() else raw


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


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


def publish(room_id: int, seq: int, text: str) -> None:
    """Hand a committed message to every process's fan-out (realtime/events.py calls this)."""
    get_fanout().backend.publish(ROOM_PREFIX + str(room_id), _encode(room_id, seq, text))


def publish_user(user_id: Any, event: dict[str, Any]) -> None:
    """Hand a user event to every process's sockets of that user."""
    get_fanout().backend.publish(USER_PREFIX + str(user_id), orjson.dumps(event))
