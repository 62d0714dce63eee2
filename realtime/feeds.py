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
from typing import Any, Protocol

from django.conf import settings

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

    def publish(self, *items: tuple[str, bytes]) -> None:
        """Send (channel, payload) pairs, in order."""
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

    def publish(self, *items: tuple[str, bytes]) -> None:
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

    def publish(self, *items: tuple[str, bytes]) -> None:
        """Called from actions' on_commit (any thread): one PUBLISH per message, a batch's
        PUBLISHes in one round trip."""
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
        if len(items) == 1:
            self._publisher.publish(*items[0])
            return
        with self._publisher.pipeline(transaction=False) as pipe:
            for channel, data in items:
                pipe.publish(channel, data)
            pipe.execute()


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
