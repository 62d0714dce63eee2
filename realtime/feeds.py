"""The transports under the channel layer (realtime/layer.py): how events reach every process.

With REDIS_URL, one Redis pub/sub connection and reader task per process,
subscribed to the channels of the groups and channels with members here,
which reconnects with backoff and resubscribes after Redis goes away; beside
it, one connection on which the event loop publishes what any thread hands it
(realtime/publish_connection.py; made again at the next publish when it is lost),
and a pooled client for threads of processes that run no feed (a Celery worker, a
management command). Without, one process hands publishes to its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import weakref
from collections.abc import Collection, Sequence
from typing import Any, Protocol

from django.conf import settings

from project import metrics
from project.redis_config import ERRORS as REDIS_ERRORS
from realtime import redis_clients
from realtime.publish_connection import LoopPublisher
from realtime.pubsub_connection import PubSubConnection
from realtime.rebroadcast import Rebroadcast
from realtime.tasks import spawn

logger = logging.getLogger(__name__)

KEEPALIVE = "chat:keepalive"


class Sink(Protocol):
    """What a transport needs of the layer it serves."""

    def wanted(self) -> list[str]:
        """The transport channels this process must be subscribed to now."""

    def deliver(self, channel: str, data: bytes) -> None: ...

    def feed_lost(self, channels: Collection[str] | None = None) -> None:
        """Called after the feed was interrupted and is back: anything may have been lost (on
        these channels; None: on any)."""


class Transport:
    def __init__(self, sink: Sink):
        self.sink = sink

    async def subscribe(self, channel: str) -> None:
        raise NotImplementedError

    def unsubscribe(self, channel: str) -> None:
        raise NotImplementedError

    def publish(self, *items: tuple[str, bytes], durable: bool = True) -> None:
        """Send (channel, payload) pairs, in order. Durable ones (not typing notices) reach
        every process even if the transport fails for a while."""
        raise NotImplementedError

    async def apublish(self, *items: tuple[str, bytes], durable: bool = True) -> None:
        """`publish` from a coroutine, without blocking the event loop."""
        self.publish(*items, durable=durable)

    def publishes_on_loop(self) -> bool:
        """Whether `publish` called on the event loop writes there, never blocking it."""
        return False

    async def close(self) -> None:
        """Stop reading and let go of connections (the layer is closing)."""


class LocalTransport(Transport):
    """One process, no Redis: publishes are handed to this process's event loop."""

    def __init__(self, sink: Sink):
        super().__init__(sink)
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

    def publishes_on_loop(self) -> bool:
        return True

    def _deliver(self, items: tuple[tuple[str, bytes], ...]) -> None:
        for channel, data in items:
            self.sink.deliver(channel, data)


class RedisTransport(Transport):
    """One Redis pub/sub connection and reader task per process.

    realtime/sharded_feed.py makes it sharded for a Redis Cluster by overriding the
    connection (`_connect`, `_disconnect`, `_consume`), the (un)subscribe commands and the
    publish command; the rest (confirmations, reconnects, rebroadcasts) is shared.
    """

    def __init__(self, sink: Sink, url: str):
        super().__init__(sink)
        self.url = url
        self.pubsub: Any = None
        # Publishes from any thread go out on the event loop through this, opened with the
        # feed's connection (realtime/sharded_feed.py opens none: its threads publish).
        self.loop_publisher = LoopPublisher(url, self._retry_later)
        self.reader: asyncio.Task[None] | None = None
        # channel -> resolved once Redis confirmed the SUBSCRIBE on the current connection
        self.confirmed: dict[str, asyncio.Future[None]] = {}
        self.lock = asyncio.Lock()
        self._publisher: Any = None
        self._publisher_lock = threading.Lock()
        # An asyncio client is bound to its event loop: one per loop that publishes.
        self._async_publishers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self.rebroadcast = Rebroadcast(self.send_each)

    def _wanted(self) -> list[str]:
        # A pub/sub connection with no subscription stops being read: keep one always.
        return [KEEPALIVE, *self.sink.wanted()]

    async def _connect(self) -> None:
        address = await redis_clients.feed_address(self.url)
        self.pubsub = await PubSubConnection.open(address, self._handle)
        try:
            await self.loop_publisher.open(address)
        except BaseException:
            self.pubsub.close()
            raise
        loop = asyncio.get_running_loop()
        channels = self._wanted()
        for channel in channels:
            # Keep a future a joining socket already waits on; it resolves on this connection.
            waiter = self.confirmed.get(channel)
            if waiter is None or waiter.done():
                self.confirmed[channel] = loop.create_future()
        self.pubsub.send("SUBSCRIBE", *channels)

    async def subscribe(self, channel: str) -> None:
        async with self.lock:
            if self.reader is None or self.reader.done():
                await self._connect()
                self.reader = spawn(self._read(), name="redis fan-out feed")
            waiter = self.confirmed.get(channel)
            if waiter is None:
                waiter = self.confirmed[channel] = asyncio.get_running_loop().create_future()
                try:
                    await self._subscribe_command(channel)
                except BaseException:
                    # Not subscribed: the next join must ask Redis again, not wait on this.
                    del self.confirmed[channel]
                    raise
        # Redis confirms a SUBSCRIBE in order on the same connection: after this, every
        # later PUBLISH to the channel reaches the reader. During a reconnect this waits
        # for the new connection's confirmation, up to FEED_JOIN_TIMEOUT_SECONDS.
        await asyncio.wait_for(asyncio.shield(waiter), timeout=settings.FEED_JOIN_TIMEOUT_SECONDS)

    async def _subscribe_command(self, channel: str) -> None:
        self.pubsub.send("SUBSCRIBE", channel)

    async def _unsubscribe_command(self, channel: str) -> None:
        self.pubsub.send("UNSUBSCRIBE", channel)

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
                await self._unsubscribe_command(channel)
            except (*REDIS_ERRORS, OSError):
                # The feed is lost; the reconnect subscribes only to what is still wanted.
                logger.info("redis fan-out unsubscribe failed; the reconnect drops it")

    async def _consume(self) -> None:
        """Wait while the connection delivers (to `_handle`, from its protocol) until it is
        lost (it never ends otherwise)."""
        self.backoff = 0.1
        await self.pubsub.wait_lost()

    async def _read(self) -> None:
        self.backoff = 0.1
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("redis fan-out feed lost; reconnecting", exc_info=True)
                metrics.DEPENDENCY_UP.labels("redis").set(0)
            # Reconnect and resubscribe everything, then let every socket fill what it missed.
            while True:
                await asyncio.sleep(self.backoff)
                self.backoff = min(self.backoff * 2, settings.FEED_RECONNECT_MAX_SECONDS)
                try:
                    await self._reconnect()
                    metrics.FEED_RECONNECTS.inc()
                    metrics.DEPENDENCY_UP.labels("redis").set(1)
                    break
                except Exception:
                    logger.warning("redis fan-out reconnect failed; retrying", exc_info=True)
            self.sink.feed_lost()

    async def _reconnect(self) -> None:
        async with self.lock:
            await self._disconnect()
            # Every channel needs a fresh confirmation on the new connection.
            for channel, waiter in list(self.confirmed.items()):
                if waiter.done():
                    del self.confirmed[channel]
            await self._connect()

    async def _disconnect(self) -> None:
        self.loop_publisher.close()
        if self.pubsub is not None:
            self.pubsub.close()

    def _handle(self, reply: list[Any]) -> None:
        """One push from the connection: [kind, channel, data or count]."""
        kind = reply[0]
        if kind == b"message":
            self.sink.deliver(reply[1].decode(), reply[2])
        elif kind == b"subscribe":
            waiter = self.confirmed.get(reply[1].decode())
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def publish(self, *items: tuple[str, bytes], durable: bool = True) -> None:
        """Called from actions' on_commit (any thread): one PUBLISH per message, a batch's
        PUBLISHes in one write. The event loop writes them (`LoopPublisher`): the calling
        thread (a store thread) does not wait for Redis. Where this process runs no feed,
        the calling thread sends them in one round trip with the pooled client.

        A durable publish (a stored message, a user event) that Redis does not take is
        retried in the background until it does (`Rebroadcast`): a quiet room's subscribers
        in other processes would otherwise not notice it until the room's next message.
        """
        if durable and self.rebroadcast.waiting():
            # A channel's publishes wait behind its own waiting ones, so each room's stay in
            # seq order; other channels' go now (on a Cluster, another shard may be fine).
            items = tuple(self.rebroadcast.hold(items))
            if not items:
                return
        if self.loop_publisher.publish(items, durable):
            return
        if _on_event_loop():
            # The store on the event loop (realtime/publisher.py) with the publish connection
            # lost: a blocking send would stall every socket of this process.
            self._retry_later(items, durable)
            return
        try:
            self.send(items)
        except REDIS_ERRORS:
            if not self._retry_later(items, durable):
                raise

    def publishes_on_loop(self) -> bool:
        return self.loop_publisher.connection is not None

    async def apublish(self, *items: tuple[str, bytes], durable: bool = True) -> None:
        if durable and self.rebroadcast.waiting():
            items = tuple(self.rebroadcast.hold(items))  # as in publish
            if not items:
                return
        try:
            with self._publisher_lock:
                client = self._async_publishers.get(asyncio.get_running_loop())
                if client is None:
                    client = self._async_publishers[asyncio.get_running_loop()] = (
                        redis_clients.async_publisher(self.url)
                    )
            async with client.pipeline(transaction=False) as pipe:
                for channel, data in items:
                    self._queue(pipe, channel, data)
                await pipe.execute()
        except REDIS_ERRORS:
            if not self._retry_later(items, durable):
                raise

    def _retry_later(self, items: Sequence[tuple[str, bytes]], durable: bool) -> bool:
        """Redis did not take a publish: queue a durable one to be sent again (True); the
        caller gives up on the rest."""
        if not durable:
            return False
        logger.warning("broadcast failed; retrying it every %ss", settings.REBROADCAST_SECONDS)
        self.rebroadcast.add(items)
        return True

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
            self.reader = None
        if self.pubsub is not None:
            await self._disconnect()
            self.pubsub = None
        self.loop_publisher.close()
        self.confirmed.clear()
        with self._publisher_lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None
            client = self._async_publishers.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def sync_publisher(self) -> Any:
        """The pooled client publishing from any thread, made on first use."""
        with self._publisher_lock:
            if self._publisher is None:
                self._publisher = redis_clients.publisher(self.url)
            return self._publisher

    def send(self, items: Sequence[tuple[str, bytes]]) -> None:
        publisher = self.sync_publisher()
        if len(items) == 1:
            self._queue(publisher, *items[0])
            return
        with publisher.pipeline(transaction=False) as pipe:
            for channel, data in items:
                self._queue(pipe, channel, data)
            pipe.execute()

    def send_each(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Send in one round trip and say which Redis took: on a Cluster one shard may be
        down while the others answer. Raises when none could be sent."""
        with self.sync_publisher().pipeline(transaction=False) as pipe:
            for channel, data in items:
                self._queue(pipe, channel, data)
            answers = pipe.execute(raise_on_error=False)
        return [not isinstance(answer, Exception) for answer in answers]

    def _queue(self, client: Any, channel: str, data: bytes) -> Any:
        """PUBLISH on a client (sent now) or a pipeline (sent with the batch)."""
        return client.publish(channel, data)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
