"""One Redis pub/sub connection, read by an asyncio protocol: the fan-out feed's reader.

Every event a process follows arrives here, so this is on the hot path once per message
(realtime/feeds.py, realtime/sharded_feed.py). Written here rather than with redis-py's
PubSub because of what that costs per message: `get_message` is a coroutine through three
layers (the pub/sub object, its retrying connection, the parser's stream reader) with a
timeout context per read, so that its health check can run. A throwaway benchmark (100
channels, 3,000 PUBLISHes a second from another process, the reader's process CPU over
30,000 messages) measured 66-74 us per message for `get_message(timeout=1.0)`, 58-60 with
no timeout, and 22-23 for this protocol, most of which is the event loop waking up.

What is not written here: RESP is parsed and commands packed by hiredis (the C parser
redis-py itself uses), and where to connect, the password and TLS come from redis-py's own
URL parsing and Sentinel discovery (`redis_clients.feed_address`). What is: which commands
a reader sends (AUTH, (S)SUBSCRIBE, (S)UNSUBSCRIBE, PING), and the health check, as one timer per
connection instead of per read: a connection quiet for REDIS_HEALTH_CHECK_SECONDS is
PINGed, and one that stays silent for REDIS_FEED_TIMEOUT_SECONDS (a frozen server, a
network that drops everything) is closed, which the feed treats as any lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from realtime.redis_clients import Address

# A pub/sub reply: [kind, channel, data or count], kind e.g. b"message", b"subscribe".
Handler = Callable[[list[Any]], None]


class PubSubConnection(asyncio.Protocol):
    """A connection in subscribed mode: commands are written, replies handed to `handler`."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.parser = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        # Replies that are not pushes (AUTH's OK), in the order their commands were sent.
        self.replies: deque[asyncio.Future[Any]] = deque()
        self.reads = 0  # data_received calls, for the health check
        self.seen = 0
        self.quiet_since = self.loop.time()
        self.pinged = False
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, address: Address, handler: Handler) -> PubSubConnection:
        """Connect and log in, within REDIS_CONNECT_TIMEOUT_SECONDS; RedisConnectionError
        when that fails."""
        connection = cls(handler)
        await connection.connect(address)
        return connection

    async def connect(self, address: Address) -> None:
        """Connect this protocol and log in (see `open`)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(settings.REDIS_CONNECT_TIMEOUT_SECONDS):
                if address.path is not None:
                    await loop.create_unix_connection(lambda: self, address.path, ssl=address.ssl)
                else:
                    await loop.create_connection(
                        lambda: self, address.host, address.port, ssl=address.ssl
                    )
                if address.password is not None:
                    credentials = [address.username] if address.username else []
                    await self.call("AUTH", *credentials, address.password)
                await self.started()
        except (OSError, TimeoutError, ResponseError) as error:
            self.close()
            raise RedisConnectionError(f"feed connection to Redis failed: {error}") from error
        except BaseException:
            self.close()
            raise

    async def started(self) -> None:
        """What a subclass sends once logged in, before the connection is handed out."""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream's transport (uvloop's TCPTransport does not subclass asyncio's).
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._schedule()

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        parser = self.parser
        parser.feed(data)
        try:
            while (reply := parser.gets()) is not False:
                if type(reply) is list:
                    self.handler(reply)
                else:
                    self._answer(reply)
        except Exception as error:  # a protocol error, or the handler's: the feed is rebuilt
            self._lose(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(exc or RedisConnectionError("Redis closed the feed connection"))

    # Commands

    def send(self, *args: str | bytes) -> None:
        """Write a command whose replies come as pushes ((S)SUBSCRIBE and the like)."""
        if self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("the feed connection is closed")
        # hiredis' stub types the command as a 1-tuple; any length packs.
        self.transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]

    async def call(self, *args: str | bytes) -> Any:
        """A command with one plain reply (before subscribing: AUTH)."""
        reply = self.loop.create_future()
        self.replies.append(reply)
        self.send(*args)
        return await reply

    async def wait_lost(self) -> None:
        """Return never: raise why the connection was lost."""
        await asyncio.shield(self.lost)

    def close(self) -> None:
        self._lose(RedisConnectionError("the feed connection was closed"))

    # Inside

    def _answer(self, reply: Any) -> None:
        error = ResponseError(str(reply)) if isinstance(reply, hiredis.ReplyError) else None
        if self.replies:
            waiter = self.replies.popleft()
            if not waiter.done():
                if error is not None:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(reply)
        elif error is not None:  # to a (S)SUBSCRIBE: MOVED, CROSSSLOT...
            raise error
        # else: +PONG to a health check PING sent before the first subscription

    def _schedule(self) -> None:
        tick = min(1.0, settings.REDIS_HEALTH_CHECK_SECONDS / 2)
        self.timer = self.loop.call_later(tick, self._check)

    def _check(self) -> None:
        """The health check: PING a quiet connection, give up on a silent one."""
        now = self.loop.time()
        if self.reads != self.seen:
            self.seen, self.quiet_since, self.pinged = self.reads, now, False
        elif now - self.quiet_since >= settings.REDIS_FEED_TIMEOUT_SECONDS:
            quiet = settings.REDIS_FEED_TIMEOUT_SECONDS
            self._lose(RedisConnectionError(f"Redis did not answer in {quiet}s"))
            return
        elif not self.pinged and now - self.quiet_since >= settings.REDIS_HEALTH_CHECK_SECONDS:
            self.pinged = True
            with contextlib.suppress(RedisConnectionError):
                self.send("PING")
        self._schedule()

    def _lose(self, error: BaseException) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.lost.done():
            self.lost.set_exception(error)
            self.lost.exception()  # retrieved: nobody may be waiting
        while self.replies:
            waiter = self.replies.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()
