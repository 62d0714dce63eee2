"""One Redis connection that PUBLISHes from the event loop, without waiting for the replies.

Stored messages used to be PUBLISHed by the thread that stored them (the publisher's store
threads, realtime/publisher.py), through redis-py's blocking client: a round trip per
batch with the thread asleep in it, and redis-py's command path (its pool, its retry
wrapper, its parser) on a thread that competes with the event loop for the interpreter.
Measured with `python -m bench.costs --connections 1` (docs/performance.md), the store
thread spent about 300 us of CPU a batch broadcasting; handing the batch to the event loop
instead costs it about 60, and the loop writes the PUBLISHes on this connection and goes
on, reading Redis' replies when they come.

Each PUBLISH stays pending until Redis answers it. When the connection is lost, `on_lost`
is told, with the pending ones: Redis may or may not have taken them, and the
transport sends them again (realtime/rebroadcast.py); a repeat is harmless, sockets drop
seqs they already have. Not written by hand elsewhere: this is the feed connection's
protocol (realtime/pubsub_connection.py: hiredis' parser and packer, the login and the
health check) with replies counted instead of awaited, which redis-py's clients do not do.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime import redis_clients
from realtime.pubsub_connection import PubSubConnection
from realtime.redis_clients import Address
from realtime.tasks import spawn

logger = logging.getLogger(__name__)

Item = tuple[str, bytes]  # (channel, payload)
# Told once the connection is lost: the items Redis did not answer, each with whether it
# is durable (none, when nothing was in flight).
LostHandler = Callable[[list[tuple[Item, bool]]], None]

NAME = "chat:publish"  # in CLIENT LIST, for operators (and the tests)
EMPTY_CONTEXT = contextvars.Context()
# Says whether it took the (durable) items to send again; takes and drops the others.
RetryLater = Callable[[Sequence[Item], bool], bool]


class PublishConnection(PubSubConnection):
    """A connection not in subscribed mode: PUBLISHes written at once, answered later."""

    def __init__(self, on_lost: LostHandler):
        super().__init__(self._push)
        self.on_lost = on_lost
        self.pending: deque[tuple[Item, bool]] = deque()  # written, not answered yet
        self.thread = threading.get_ident()  # the event loop's: where it may be written

    @classmethod
    async def open_publisher(cls, address: Address, on_lost: LostHandler) -> PublishConnection:
        """Connect, log in and name the connection; RedisConnectionError when that fails."""
        connection = cls(on_lost)
        await connection.connect(address)
        return connection

    async def started(self) -> None:
        await self.call("CLIENT", "SETNAME", NAME)

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def publish(self, items: Sequence[Item], durable: bool) -> None:
        """Write one PUBLISH per item, in order, in one write (on the event loop's thread).
        Raises RedisConnectionError when the connection is closed: nothing was written."""
        if not self.usable:
            raise RedisConnectionError("the publish connection is closed")
        assert self.transport is not None  # noqa: S101 -- usable
        # hiredis' stub types the command as a 1-tuple; any length packs.
        pack = hiredis.pack_command
        self.transport.write(
            b"".join(pack(("PUBLISH", channel, data)) for channel, data in items)  # type: ignore[arg-type]
        )
        self.pending.extend((item, durable) for item in items)

    # Inside

    def _push(self, reply: list[Any]) -> None:
        raise RedisConnectionError(f"unexpected push on the publish connection: {reply[:1]}")

    def _answer(self, reply: Any) -> None:
        if self.replies:  # a call's (login, the name)
            super()._answer(reply)
        elif type(reply) is int:  # a PUBLISH's: how many subscribers got it
            self.pending.popleft()
        elif isinstance(reply, hiredis.ReplyError) and self.pending:
            # Refused (a NOPERM, say): not taken. The connection goes, and with it the pending.
            raise RedisConnectionError(f"Redis refused a PUBLISH: {reply}")
        # else: +PONG to the health check's PING

    def _lose(self, error: BaseException) -> None:
        first = not self.lost.done()
        super()._lose(error)
        if first:  # told once, even with nothing unanswered
            unanswered, self.pending = list(self.pending), deque()
            self.on_lost(unanswered)


class LoopPublisher:
    """A transport's publish connection on its event loop (realtime/feeds.py): opened and
    closed with the feed's, and made again, in the background, when a publish finds it lost
    (a Redis `timeout` or a proxy closes idle clients; the feed's is exempt as a subscriber).
    What it did not answer is handed to `retry_later`."""

    def __init__(self, url: str, retry_later: RetryLater):
        self.url = url
        self.retry_later = retry_later
        self.connection: PublishConnection | None = None
        self.reopening = False  # a new connection is being made
        self.reopen_after = 0.0  # monotonic: not before, after an attempt failed

    async def open(self, address: Address) -> None:
        """On the event loop: a new connection in place of any other."""
        self.close()
        self.connection = await PublishConnection.open_publisher(address, self._lost)

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()

    def publish(self, items: Sequence[Item], durable: bool) -> bool:
        """From any thread: have the event loop write the PUBLISHes. False when there is no
        usable connection: the caller sends them itself."""
        connection = self.connection
        if connection is None:
            return False
        if not connection.usable:
            self._reopen_later(connection)
            return False
        if threading.get_ident() == connection.thread:
            self._write(connection, items, durable)
            return True
        try:
            # An empty context: the caller's (a store thread's) must not leak in.
            connection.loop.call_soon_threadsafe(
                self._write, connection, items, durable, context=EMPTY_CONTEXT
            )
        except RuntimeError:  # its loop closed: as if there were no connection
            return False
        return True

    def _write(self, connection: PublishConnection, items: Sequence[Item], durable: bool) -> None:
        try:
            connection.publish(items, durable)
        except RedisConnectionError:  # lost since the items were handed over
            self.retry_later(items, durable)

    def _lost(self, unanswered: list[tuple[Item, bool]]) -> None:
        """Redis may not have taken what it did not answer: durable ones are sent again."""
        again = [item for item, durable in unanswered if durable]
        if again:
            self.retry_later(again, True)

    def _reopen_later(self, lost: PublishConnection) -> None:
        """From any thread: unless a new connection is being made, or the last attempt
        failed under a second ago."""
        if self.reopening or time.monotonic() < self.reopen_after:
            return
        self.reopening = True  # a race between two threads costs one spare connection
        try:
            lost.loop.call_soon_threadsafe(self._reopen, lost, context=EMPTY_CONTEXT)
        except RuntimeError:  # its loop closed: there will be no new one
            self.reopening = False

    def _reopen(self, lost: PublishConnection) -> None:
        spawn(self._reopen_in_place_of(lost), name="redis publish connection")

    async def _reopen_in_place_of(self, lost: PublishConnection) -> None:
        try:
            if self.connection is not lost:
                return  # the feed reconnected (or closed) meanwhile, with its own
            address = await redis_clients.feed_address(self.url)
            connection = await PublishConnection.open_publisher(address, self._lost)
            if self.connection is lost:
                self.connection = connection
            else:
                connection.close()
        except Exception:
            self.reopen_after = time.monotonic() + 1.0
            logger.info("redis publish connection not made again yet", exc_info=True)
        finally:
            self.reopening = False
