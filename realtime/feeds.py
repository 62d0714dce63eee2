"""The feeds under the fan-out (realtime/fanout.py): how events reach every process.

With REDIS_URL, one Redis pub/sub connection and reader task per process,
subscribed to the channels of the rooms and users with sockets here, which
reconnects with backoff and resubscribes after Redis goes away. Without, one
process hands publishes to its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis
from django.conf import settings
from redis.exceptions import RedisError

from realtime.tasks import spawn

logger = logging.getLogger(__name__)

ROOM_PREFIX = "chat:room:"
USER_PREFIX = "chat:user:"
KEEPALIVE = "chat:keepalive"
JOIN_TIMEOUT = 5.0


class Sink(Protocol):
    """What a feed needs of the fan-out it serves."""

    rooms: dict[int, Any]
    users: dict[Any, Any]

    def deliver(self, channel: str, data: bytes) -> None: ...

    def resync_all(self) -> None: ...


class Backend:
    def __init__(self, fanout: Sink):
        self.fanout = fanout

    async def subscribe(self, channel: str) -> None:
        raise NotImplementedError

    def unsubscribe(self, channel: str) -> None:
        raise NotImplementedError

    def publish(self, *items: tuple[str, bytes], durable: bool = True) -> None:
        """Send (channel, payload) pairs, in order. Durable ones (not typing notices) reach
        every process even if the transport fails for a while."""
        raise NotImplementedError


class LocalBackend(Backend):
    """One process, no Redis: publishes are handed to this process's event loop."""

    def __init__(self, fanout: Sink):
        super().__init__(fanout)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def subscribe(self, channel: str) -> None:
        self.loop = asyncio.get_running_loop()

    def unsubscribe(self, channel: str) -> None:
        pass

    def publish(self, *items: tuple[str, bytes], durable: bool = True) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return  # nobody in this process has ever subscribed
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(items)
        else:
            # An empty context: the caller's (a sync_to_async thread's) must not leak in.
            loop.call_soon_threadsafe(self._deliver, items, context=contextvars.Context())

    def _deliver(self, items: tuple[tuple[str, bytes], ...]) -> None:
        for channel, data in items:
            self.fanout.deliver(channel, data)


class RedisBackend(Backend):
    """One Redis pub/sub connection and reader task per process."""

    def __init__(self, fanout: Sink):
        super().__init__(fanout)
        self.pubsub: Any = None
        self.reader: asyncio.Task[None] | None = None
        # channel -> resolved once Redis confirmed the SUBSCRIBE on the current connection
        self.confirmed: dict[str, asyncio.Future[None]] = {}
        self.lock = asyncio.Lock()
        self._publisher: Any = None
        self._publisher_lock = threading.Lock()
        self.rebroadcast = Rebroadcast(self.send)

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
                self.reader = spawn(self._read(), name="redis fan-out feed")
            waiter = self.confirmed.get(channel)
            if waiter is None:
                waiter = self.confirmed[channel] = asyncio.get_running_loop().create_future()
                try:
                    await self.pubsub.subscribe(channel)
                except BaseException:
                    # Not subscribed: the next join must ask Redis again, not wait on this.
                    del self.confirmed[channel]
                    raise
        # Redis confirms a SUBSCRIBE in order on the same connection: after this, every
        # later PUBLISH to the channel reaches the reader. During a reconnect this waits
        # for the new connection's confirmation, up to JOIN_TIMEOUT.
        await asyncio.wait_for(asyncio.shield(waiter), timeout=JOIN_TIMEOUT)

    def unsubscribe(self, channel: str) -> None:
        spawn(self._unsubscribe(channel), name="redis fan-out unsubscribe")

    async def _unsubscribe(self, channel: str) -> None:
        # Under the lock, and only if nobody joined again meanwhile: a SUBSCRIBE and
        # an UNSUBSCRIBE for one channel never cross.
        async with self.lock:
            if channel in self._wanted():
                return
            # Forgotten even if Redis is away: a later join subscribes afresh.
            self.confirmed.pop(channel, None)
            if self.pubsub is None:
                return
            try:
                await self.pubsub.unsubscribe(channel)
            except (RedisError, OSError):
                # The feed is lost; the reconnect subscribes only to what is still wanted.
                logger.info("redis fan-out unsubscribe failed; the reconnect drops it")

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

    def publish(self, *items: tuple[str, bytes], durable: bool = True) -> None:
        """Called from actions' on_commit (any thread): one PUBLISH per message, a batch's
        PUBLISHes in one round trip.

        A durable publish (a stored message, a user event) that Redis does not take is
        retried in the background until it does (`Rebroadcast`): a quiet room's subscribers
        in other processes would otherwise not notice it until the room's next message.
        """
        if durable and self.rebroadcast.waiting():
            # Behind the ones waiting, so each room's stay in seq order.
            self.rebroadcast.add(items)
            return
        try:
            self.send(items)
        except RedisError:
            if not durable:
                raise
            logger.warning("broadcast failed; retrying it every %ss", settings.REBROADCAST_SECONDS)
            self.rebroadcast.add(items)

    def send(self, items: Sequence[tuple[str, bytes]]) -> None:
        with self._publisher_lock:
            if self._publisher is None:
                self._publisher = redis.Redis.from_url(
                    str(settings.REDIS_URL),
                    socket_connect_timeout=2,
                    socket_keepalive=True,
                    socket_timeout=2,
                    # Pooled connections the server closed (idle timeout, restart) are
                    # noticed and reopened instead of failing the next publish.
                    health_check_interval=10,
                )
        if len(items) == 1:
            self._publisher.publish(*items[0])
            return
        with self._publisher.pipeline(transaction=False) as pipe:
            for channel, data in items:
                pipe.publish(channel, data)
            pipe.execute()


class Rebroadcast:
    """Broadcasts Redis did not take, sent again in order from a thread of their own.

    A thread, not a task: publishes come from any thread (the publisher's pool, a
    view's, a management command's), including processes with no event loop. It
    runs only while something waits, every REBROADCAST_SECONDS, and stops once
    Redis has taken everything. A repeat of what Redis did take (a PUBLISH that
    timed out on our side) is harmless: sockets drop seqs they already have.
    """

    def __init__(self, send: Callable[[Sequence[tuple[str, bytes]]], None]):
        self._send = send
        self._items: deque[tuple[str, bytes]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def waiting(self) -> int:
        return len(self._items)

    def add(self, items: Sequence[tuple[str, bytes]]) -> None:
        with self._lock:
            self._items.extend(items)
            overflow = len(self._items) - settings.REBROADCAST_MAX
            for _ in range(max(overflow, 0)):
                # Subscribers still get these from the database: at the room's next message,
                # or when they reconnect.
                self._items.popleft()
            if overflow > 0:
                logger.error("dropped %d broadcasts waiting for Redis", overflow)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rebroadcast", daemon=True)
                self._thread.start()
            else:
                self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(settings.REBROADCAST_SECONDS)
            self._wake.clear()
            with self._lock:
                items = list(self._items)
            if items:
                try:
                    self._send(items)
                except RedisError:
                    continue
                logger.info("%d broadcasts went out once Redis answered again", len(items))
            with self._lock:
                for _ in items:
                    self._items.popleft()
                if not self._items:
                    self._thread = None
                    return
