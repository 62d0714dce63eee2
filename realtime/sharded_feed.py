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

Any surprise breaks the whole feed: a shard's connection lost, an error reply (MOVED), a
`sunsubscribe` the server sent by itself (the channel's slot moved), a channel whose master
has no connection here (a master was added). RedisTransport's reader then reconnects with
backoff: it reads the topology afresh from the seed nodes, subscribes every wanted channel
on its current master, and tells the layer that anything may have been lost. Rare, and
simple to get right.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from realtime import redis_clients
from realtime.feeds import KEEPALIVE, RedisTransport
from realtime.tasks import spawn


class FeedBroken(ConnectionError):
    """The sharded feed must be rebuilt (the reason is the message)."""


class Shard:
    """The pub/sub connection to one master, and the task reading it."""

    def __init__(self, name: str, host: str, port: int, url: str):
        self.name = name
        self.client = redis_clients.node_client(host, port, url)
        self.pubsub: Any = self.client.pubsub()
        self.reader: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()


class ShardedTransport(RedisTransport):
    """RedisTransport over a Redis Cluster's sharded pub/sub."""

    def __init__(self, sink: Any, url: str):
        super().__init__(sink, url)
        self.cluster: RedisCluster | None = None
        self.shards: dict[str, Shard] = {}
        self.keepalives: list[str] = []
        self.broken: asyncio.Future[None] | None = None

    def _wanted(self) -> list[str]:
        return [*self.keepalives, *self.sink.wanted()]

    async def _connect(self) -> None:
        cluster = redis_clients.feed_client(self.url)
        assert isinstance(cluster, RedisCluster)  # noqa: S101 -- a redis+cluster:// URL
        self.cluster = cluster
        try:
            await cluster.initialize()
            loop = asyncio.get_running_loop()
            self.broken = loop.create_future()
            self.shards = {
                node.name: Shard(node.name, node.host, int(node.port), self.url)
                for node in cluster.get_primaries()
            }
            self.keepalives = [self._keepalive(name) for name in self.shards]
            # The base class's "connected" mark: its unsubscribe and close look at it.
            self.pubsub = self.shards
            channels = self._wanted()
            for channel in channels:
                # Keep a future a joining socket already waits on; it resolves on this feed.
                waiter = self.confirmed.get(channel)
                if waiter is None or waiter.done():
                    self.confirmed[channel] = loop.create_future()
            # One SSUBSCRIBE per slot: Redis refuses one that spans slots (CROSSSLOT).
            by_slot: dict[tuple[str, int], list[str]] = defaultdict(list)
            for channel in channels:
                by_slot[self._shard_of(channel).name, key_slot(channel.encode())].append(channel)
            for (name, _slot), names in by_slot.items():
                await self.shards[name].pubsub.ssubscribe(*names)
        except BaseException:
            await self._disconnect()
            raise
        for shard in self.shards.values():
            shard.reader = spawn(self._read_shard(shard), name=f"redis shard feed {shard.name}")

    def _shard_of(self, channel: str) -> Shard:
        assert self.cluster is not None  # noqa: S101 -- connected
        node = self.cluster.get_node_from_key(channel)
        shard = self.shards.get(node.name) if node is not None else None
        if shard is None:
            raise FeedBroken(f"no feed connection to the master of {channel}")
        return shard

    def _keepalive(self, name: str) -> str:
        """A channel on the shard `name`, so its connection always has a subscription."""
        assert self.cluster is not None  # noqa: S101 -- connected
        for n in itertools.count():
            channel = f"{KEEPALIVE}:{n}"
            node = self.cluster.get_node_from_key(channel)
            if node is not None and node.name == name:
                return channel
        raise AssertionError("unreachable")  # pragma: no cover

    async def _consume(self) -> None:
        """Wait until a shard's reader (or a subscribe) says the feed is broken."""
        assert self.broken is not None  # noqa: S101 -- connected
        await self.broken

    def _break(self, error: BaseException) -> None:
        if self.broken is not None and not self.broken.done():
            self.broken.set_exception(error)

    async def _read_shard(self, shard: Shard) -> None:
        try:
            while True:
                item = await shard.pubsub.get_message(timeout=1.0)
                if item is not None:
                    self.backoff = 0.1
                    self._handle(item)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self._break(error)

    def _handle(self, item: dict[str, Any]) -> None:
        kind = item["type"]
        channel = item["channel"].decode()
        if kind == "smessage":
            self.sink.deliver(channel, item["data"])
        elif kind == "ssubscribe":
            waiter = self.confirmed.get(channel)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == "sunsubscribe" and channel in self.confirmed:
            # Not asked for (an unsubscribe forgets the channel first): its slot moved.
            self._break(FeedBroken(f"Redis unsubscribed {channel}: its slot moved"))

    async def _subscribe_command(self, channel: str) -> None:
        try:
            shard = self._shard_of(channel)
        except FeedBroken as error:
            # The rebuild subscribes it (it is wanted) and resolves the caller's wait.
            self._break(error)
            return
        await shard.pubsub.ssubscribe(channel)

    async def _unsubscribe_command(self, channel: str) -> None:
        with contextlib.suppress(FeedBroken):  # no connection to it: nothing to undo
            await self._shard_of(channel).pubsub.sunsubscribe(channel)

    async def _disconnect(self) -> None:
        shards, self.shards = list(self.shards.values()), {}
        for shard in shards:
            await shard.close()
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            with contextlib.suppress(Exception):
                await cluster.aclose()

    def _queue(self, client: Any, channel: str, data: bytes) -> Any:
        return client.spublish(channel, data)
