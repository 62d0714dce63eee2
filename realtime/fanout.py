"""Per-process fan-out of room messages: the hot path.

Every process holds one subscription per room that has local subscribers (a
Redis pub/sub channel, or nothing with the in-memory default), however many
sockets watch the room. A published message arrives once per process, is
encoded once, and is written to each in-sync socket without a coroutine per
recipient (realtime/wire.py).

A subscription that is not in sync (still backfilling, or it saw a hole) is
not written to; it records the highest seq it has seen and its consumer
catches up from the database (realtime/consumers.py), which is what keeps
every socket gap-free and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings

from realtime.wire import Writer, text_frame

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "chat:room:"
EPHEMERAL = 0  # the seq of events that are not stored messages


class Subscription:
    """One socket's view of one room."""

    __slots__ = ("last_sent", "live", "max_seen", "on_behind", "room_id", "writer")

    def __init__(self, room_id: int, writer: Writer, on_behind: Callable[[Subscription], None]):
        self.room_id = room_id
        self.writer = writer
        # Called (synchronously) when this subscription needs its consumer to catch up.
        self.on_behind = on_behind
        self.last_sent = 0
        self.max_seen = 0
        self.live = False


class Fanout:
    """The process's table of room -> local subscriptions."""

    def __init__(self) -> None:
        self.rooms: dict[int, dict[Subscription, None]] = {}
        self.backend: Backend = RedisBackend(self) if settings.REDIS_URL else LocalBackend(self)

    async def join(self, sub: Subscription) -> None:
        """Add a subscription; returns once messages published from now on will reach it."""
        subs = self.rooms.get(sub.room_id)
        if subs is None:
            subs = self.rooms[sub.room_id] = {}
        subs[sub] = None
        await self.backend.subscribe(sub.room_id)

    def leave(self, sub: Subscription) -> None:
        subs = self.rooms.get(sub.room_id)
        if subs is None:
            return
        subs.pop(sub, None)
        if not subs:
            del self.rooms[sub.room_id]
            self.backend.unsubscribe(sub.room_id)

    def dispatch(self, room_id: int, seq: int, text: str) -> None:
        """Deliver one published message to this process's subscribers of the room."""
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


class Backend:
    def __init__(self, fanout: Fanout):
        self.fanout = fanout

    async def subscribe(self, room_id: int) -> None:
        raise NotImplementedError

    def unsubscribe(self, room_id: int) -> None:
        raise NotImplementedError

    def publish(self, room_id: int, seq: int, text: str) -> None:
        raise NotImplementedError


class LocalBackend(Backend):
    """One process, no Redis: publishes are handed to this process's event loop."""

    def __init__(self, fanout: Fanout):
        super().__init__(fanout)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def subscribe(self, room_id: int) -> None:
        self.loop = asyncio.get_running_loop()

    def unsubscribe(self, room_id: int) -> None:
        pass

    def publish(self, room_id: int, seq: int, text: str) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return  # nobody in this process has ever subscribed
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.fanout.dispatch(room_id, seq, text)
        else:
            # An empty context: the caller's (a sync_to_async thread's) must not leak in.
            loop.call_soon_threadsafe(
                self.fanout.dispatch, room_id, seq, text, context=contextvars.Context()
            )


class RedisBackend(Backend):
    """One Redis pub/sub channel per room; one reader task per process."""

    def __init__(self, fanout: Fanout):
        super().__init__(fanout)
        self.pubsub: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.confirmed: dict[str, asyncio.Future[None]] = {}
        self.lock = asyncio.Lock()
        self._publisher: Any = None
        self._publisher_lock = threading.Lock()

    async def _connect(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(
            str(settings.REDIS_URL),
            socket_connect_timeout=5,
            socket_timeout=15,
            # A PING when the feed has been quiet this long: a dead server shows up.
            health_check_interval=10,
        )
        self.pubsub = client.pubsub()
        # A pub/sub connection with no subscription stops being read: keep one always.
        channels = [CHANNEL_PREFIX + "keepalive"]
        channels += [CHANNEL_PREFIX + str(room_id) for room_id in self.fanout.rooms]
        await self.pubsub.subscribe(*channels)

    async def subscribe(self, room_id: int) -> None:
        channel = CHANNEL_PREFIX + str(room_id)
        async with self.lock:
            if self.reader is None or self.reader.done():
                await self._connect()
                self.reader = asyncio.create_task(self._read(), context=contextvars.Context())
            waiter = self.confirmed.get(channel)
            if waiter is None:
                waiter = self.confirmed[channel] = asyncio.get_running_loop().create_future()
                await self.pubsub.subscribe(channel)
        # Redis confirms a SUBSCRIBE in order on the same connection: after this,
        # every later PUBLISH to the channel reaches the reader.
        await asyncio.wait_for(asyncio.shield(waiter), timeout=5)

    def unsubscribe(self, room_id: int) -> None:
        task = asyncio.ensure_future(self._unsubscribe(room_id))
        task.add_done_callback(_ignore_result)

    async def _unsubscribe(self, room_id: int) -> None:
        # Under the lock, and only if nobody joined again meanwhile: a SUBSCRIBE and
        # an UNSUBSCRIBE for one channel never cross.
        async with self.lock:
            if room_id in self.fanout.rooms or self.pubsub is None:
                return
            channel = CHANNEL_PREFIX + str(room_id)
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
            # Reconnect, resubscribe every room, then let every socket fill what it missed.
            for waiter in self.confirmed.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("redis feed lost"))
            self.confirmed.clear()
            while True:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                with contextlib.suppress(Exception):
                    await self._reconnect()
                    break
            self.fanout.resync_all()

    async def _reconnect(self) -> None:
        async with self.lock:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
            await self._connect()
            loop = asyncio.get_running_loop()
            for room_id in self.fanout.rooms:
                channel = CHANNEL_PREFIX + str(room_id)
                self.confirmed[channel] = loop.create_future()

    def _handle(self, item: dict[str, Any]) -> None:
        kind = item["type"]
        channel = item["channel"].decode()
        if kind == "message":
            room_id, seq, text = _decode(item["data"])
            self.fanout.dispatch(room_id, seq, text)
        elif kind == "subscribe":
            waiter = self.confirmed.get(channel)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def publish(self, room_id: int, seq: int, text: str) -> None:
        """Called from actions' on_commit (any thread): one PUBLISH per message."""
        with self._publisher_lock:
            if self._publisher is None:
                import redis

                self._publisher = redis.Redis.from_url(
                    str(settings.REDIS_URL), socket_connect_timeout=2, socket_timeout=2
                )
        self._publisher.publish(CHANNEL_PREFIX + str(room_id), _encode(room_id, seq, text))


def _encode(room_id: int, seq: int, text: str) -> bytes:
    # The seq up front, then the ready frame text: readers never parse the message.
    return f"{room_id} {seq} ".encode() + text.encode()


def _decode(data: bytes) -> tuple[int, int, str]:
    room_id, seq, text = data.split(b" ", 2)
    return int(room_id), int(seq), text.decode()


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
    get_fanout().backend.publish(room_id, seq, text)
