"""The fan-out's transport on a Redis Cluster: sharded pub/sub (SSUBSCRIBE and SPUBLISH).

A group's channel lives on the master that owns its slot: a SPUBLISH goes to that shard
alone and reaches the processes subscribed there, where a plain PUBLISH is copied over the
cluster bus to every node. So the cluster's pub/sub capacity grows with its masters, and
each room's events stay in one shard, in order.

Per process: one RedisCluster client (which master owns which slot; publishing, routed by
slot, from RedisTransport's publishers) and one pub/sub connection per master, each read by
a task of its own, each subscribed to a keepalive channel of its shard so that a dead
master is noticed even when no room here lives on it.

Written here rather than with redis-py's ClusterPubSub: its reader polls the masters'
connections in turn, each with the caller's timeout, so a quiet shard would hold up a busy
one's messages by up to that timeout; and after a failover it moves channels to the new
master silently, where the layer must know that messages may have been lost, so that
sockets catch up from PostgreSQL.

A shard's connection lost (its master died, failed over, restarted) is mended alone: the
other shards' connections keep delivering while that one's channels wait, with backoff, for
the topology to name their new master (a replica promoted), are subscribed there, and the
layer hears that those channels, and only those, may have lost messages; their sockets
catch up from PostgreSQL. Anything else unexpected breaks the whole feed: an error reply
(MOVED), a `sunsubscribe` the server sent by itself (a slot moved), a channel whose master
has no connection here (a master was added). RedisTransport's reader then reconnects with
backoff: it reads the topology afresh from the seed nodes, subscribes every wanted channel
on its current master, and tells the layer that anything may have been lost. Rare, and
simple to get right.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from project import metrics
from project.redis_config import ERRORS as REDIS_ERRORS
from realtime import redis_clients
from realtime.feeds import KEEPALIVE, RedisTransport
from realtime.pubsub_connection import Handler, PubSubConnection
from realtime.tasks import spawn

logger = logging.getLogger(__name__)


class FeedBroken(ConnectionError):
    """The sharded feed must be rebuilt (the reason is the message)."""


class Shard:
    """The pub/sub connection to one master (made on its first subscription), and the task
    waiting for it to be lost."""

    def __init__(self, name: str, address: redis_clients.Address, handler: Handler):
        self.name = name
        self.address = address
        self.handler = handler
        self.pubsub: PubSubConnection | None = None
        self.reader: asyncio.Task[None] | None = None

    async def send(self, *command: str) -> None:
        if self.pubsub is None:
            self.pubsub = await PubSubConnection.open(self.address, self.handler)
        self.pubsub.send(*command)

    async def close(self) -> None:
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        if self.pubsub is not None:
            self.pubsub.close()


class ShardedTransport(RedisTransport):
    """RedisTransport over a Redis Cluster's sharded pub/sub."""

    def __init__(self, sink: Any, url: str):
        super().__init__(sink, url)
        self.cluster: RedisCluster | None = None
        self.shards: dict[str, Shard] = {}  # master's name -> the connection to it
        self.placed: dict[str, str] = {}  # channel -> the shard it is subscribed on
        self.keepalives: dict[str, str] = {}  # master's name -> a channel of its slots
        self.mending: asyncio.Task[None] | None = None
        self.broken: asyncio.Future[None] | None = None

    def _wanted(self) -> list[str]:
        return [*(self._keepalive(name) for name in self.shards), *self.sink.wanted()]

    # Connecting, as a whole and shard by shard.

    async def _connect(self) -> None:
        cluster = redis_clients.feed_client(self.url)
        assert isinstance(cluster, RedisCluster)  # noqa: S101 -- a redis+cluster:// URL
        self.cluster = cluster
        try:
            await cluster.initialize()
            self.broken = asyncio.get_running_loop().create_future()
            self.shards = {
                node.name: self._new_shard(node.name, node.host, int(node.port))
                for node in cluster.get_primaries()
            }
            # The base class's "connected" mark: its unsubscribe and close look at it.
            self.pubsub = self.shards
            await self._subscribe_all(self._wanted())
        except BaseException:
            await self._disconnect()
            raise
        for shard in self.shards.values():
            self._start_reading(shard)

    async def _subscribe_all(self, channels: list[str]) -> None:
        """Subscribe channels on their masters' connections (made for masters new here)."""
        loop = asyncio.get_running_loop()
        for channel in channels:
            # Keep a future a joining socket already waits on; it resolves on this feed.
            waiter = self.confirmed.get(channel)
            if waiter is None or waiter.done():
                self.confirmed[channel] = loop.create_future()
        # One SSUBSCRIBE per slot: Redis refuses one that spans slots (CROSSSLOT).
        by_slot: dict[tuple[str, int], list[str]] = defaultdict(list)
        for channel in channels:
            shard = self._shard_of(channel, add=True)
            by_slot[shard.name, key_slot(channel.encode())].append(channel)
        for (name, _slot), names in by_slot.items():
            await self.shards[name].send("SSUBSCRIBE", *names)
            self.placed.update((channel, name) for channel in names)

    def _start_reading(self, shard: Shard) -> None:
        if shard.reader is None:
            shard.reader = spawn(self._read_shard(shard), name=f"redis shard feed {shard.name}")

    def _shard_of(self, channel: str, *, add: bool = False) -> Shard:
        """The connection to the channel's master; with `add`, made if there is none."""
        assert self.cluster is not None  # noqa: S101 -- connected
        node = self.cluster.get_node_from_key(channel)
        if node is None:
            raise FeedBroken(f"no master for {channel}")
        shard = self.shards.get(node.name)
        if shard is None:
            if not add:
                raise FeedBroken(f"no feed connection to the master of {channel}")
            shard = self.shards[node.name] = self._new_shard(node.name, node.host, int(node.port))
        return shard

    def _new_shard(self, name: str, host: str, port: int) -> Shard:
        return Shard(name, redis_clients.node_address(host, port, self.url), self._handle)

    def _keepalive(self, name: str) -> str:
        """A channel on the shard `name`, so its connection always has a subscription."""
        channel = self.keepalives.get(name)
        if channel is not None:
            return channel
        assert self.cluster is not None  # noqa: S101 -- connected
        for n in itertools.count():
            channel = f"{KEEPALIVE}:{n}"
            node = self.cluster.get_node_from_key(channel)
            if node is not None and node.name == name:
                self.keepalives[name] = channel
                return channel
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_shard(self, shard: Shard) -> None:
        """Wait while the shard's connection delivers (to `_handle`) until it is lost."""
        try:
            assert shard.pubsub is not None  # noqa: S101 -- subscribed before reading
            self.backoff = 0.1
            await shard.pubsub.wait_lost()
        except asyncio.CancelledError:
            raise
        except BaseException:
            logger.warning("redis shard %s feed lost; mending it", shard.name, exc_info=True)
            metrics.DEPENDENCY_UP.labels("redis").set(0)
            if self.shards.get(shard.name) is shard:
                del self.shards[shard.name]
            spawn(shard.close(), name=f"close redis shard feed {shard.name}")
            if self.mending is None or self.mending.done():
                self.mending = spawn(self._mend(), name="redis shard feed mend")

    async def _mend(self) -> None:
        """Subscribe the channels of lost shards on their masters once the topology names
        masters that answer (a replica promoted); then tell the layer those channels, and
        only those, may have lost messages. The other shards deliver meanwhile."""
        backoff = 0.1
        while True:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, settings.FEED_RECONNECT_MAX_SECONDS)
            async with self.lock:
                assert self.cluster is not None  # noqa: S101 -- connected
                lost = [c for c in self.sink.wanted() if self.placed.get(c) not in self.shards]
                known = set(self.shards)
                try:
                    await self.cluster.nodes_manager.initialize()
                    await self._subscribe_all(lost)
                    new = [self.shards[name] for name in set(self.shards) - known]
                    for shard in new:
                        await shard.send("SSUBSCRIBE", self._keepalive(shard.name))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.info("redis shard feed not mended yet", exc_info=True)
                    for name in set(self.shards) - known:
                        spawn(self.shards.pop(name).close(), name="close redis shard feed")
                    continue
                for shard in new:
                    self._start_reading(shard)
            metrics.FEED_RECONNECTS.inc()
            metrics.DEPENDENCY_UP.labels("redis").set(1)
            self.sink.feed_lost(lost)
            return

    async def _consume(self) -> None:
        """Wait until something the shards cannot mend alone breaks the whole feed."""
        assert self.broken is not None  # noqa: S101 -- connected
        await self.broken

    def _break(self, error: BaseException) -> None:
        if self.broken is not None and not self.broken.done():
            self.broken.set_exception(error)

    def _handle(self, reply: list[Any]) -> None:
        kind = reply[0]
        if kind == b"smessage":
            self.sink.deliver(reply[1].decode(), reply[2])
            return
        channel = reply[1].decode()
        if kind == b"ssubscribe":
            waiter = self.confirmed.get(channel)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == b"sunsubscribe" and channel in self.confirmed:
            # Not asked for (an unsubscribe forgets the channel first): its slot moved.
            self._break(FeedBroken(f"Redis unsubscribed {channel}: its slot moved"))

    async def _subscribe_command(self, channel: str) -> None:
        try:
            shard = self._shard_of(channel)
        except FeedBroken:
            if self.mending is not None and not self.mending.done():
                return  # its master was lost: the mend subscribes it with the others
            try:
                shard = self._shard_of(channel, add=True)  # a master new here
            except FeedBroken as error:
                # The rebuild subscribes it (it is wanted) and resolves the caller's wait.
                self._break(error)
                return
        await shard.send("SSUBSCRIBE", channel)
        self.placed[channel] = shard.name
        if shard.reader is None:  # a master new here: keep its connection subscribed
            await shard.send("SSUBSCRIBE", self._keepalive(shard.name))
            self._start_reading(shard)

    async def _unsubscribe_command(self, channel: str) -> None:
        name = self.placed.pop(channel, None)
        shard = self.shards.get(name) if name is not None else None
        if shard is not None:
            await shard.send("SUNSUBSCRIBE", channel)

    async def _disconnect(self) -> None:
        if self.mending is not None and self.mending is not asyncio.current_task():
            self.mending.cancel()
        self.mending = None
        self.placed.clear()
        self.keepalives.clear()
        shards, self.shards = list(self.shards.values()), {}
        for shard in shards:
            await shard.close()
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            with contextlib.suppress(Exception):
                await cluster.aclose()

    def _queue(self, client: Any, channel: str, data: bytes) -> Any:
        return client.spublish(channel, data)

    def send_each(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """One pipeline per master: redis-py fails a Cluster pipeline as a whole when one of
        its nodes is down, which would keep the other shards' broadcasts waiting with it."""
        publisher = self.sync_publisher()
        by_master: dict[str, list[int]] = defaultdict(list)
        for i, (channel, _) in enumerate(items):
            node = publisher.get_node_from_key(channel)
            by_master[node.name if node is not None else ""].append(i)
        taken = [False] * len(items)
        for indexes in by_master.values():
            try:
                answers = super().send_each([items[i] for i in indexes])
            except REDIS_ERRORS:
                continue  # that master is down: its broadcasts wait
            for i, ok in zip(indexes, answers, strict=True):
                taken[i] = ok
        return taken
