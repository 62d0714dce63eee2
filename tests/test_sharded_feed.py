"""The channel layer on a Redis Cluster (realtime/sharded_feed.py): sharded pub/sub, one
connection per master, and a rebuild that tells the layer when something may have been lost.

The layer's behaviour across processes is tests/test_layer.py's, run on a cluster too; here
is what only a cluster has. A real three-master cluster (tests/conftest.py `redis_cluster`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Collection
from typing import Any

import pytest
import redis

from realtime.layer import GROUP_PREFIX, ChatChannelLayer
from realtime.sharded_feed import ShardedTransport


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True)


def groups_on_every_master(cluster: Any, per_master: int = 2) -> dict[int, list[str]]:
    """Group names whose channels land on each master, `per_master` of them each."""
    found: dict[int, list[str]] = {port: [] for port in cluster.master_ports()}
    for n in itertools.count():
        group = f"room.{n}"
        owners = found[cluster.master_of(GROUP_PREFIX + group)]
        if len(owners) < per_master:
            owners.append(group)
        if all(len(groups) == per_master for groups in found.values()):
            return found
    raise AssertionError("unreachable")


@pytest.fixture
async def two_processes(
    redis_cluster_url: str,
) -> AsyncIterator[tuple[ChatChannelLayer, ChatChannelLayer]]:
    a, b = ChatChannelLayer(url=redis_cluster_url), ChatChannelLayer(url=redis_cluster_url)
    yield a, b
    await a.flush()
    await b.flush()


def _spublishes(port: int) -> int:
    stats = _client(port).info("commandstats")
    return int(stats.get("cmdstat_spublish", {}).get("calls", 0))


async def test_each_group_is_subscribed_and_published_on_its_own_master(
    redis_cluster: Any, two_processes: tuple[ChatChannelLayer, ChatChannelLayer]
) -> None:
    a, b = two_processes
    assert isinstance(b.transport, ShardedTransport)
    placed = groups_on_every_master(redis_cluster)
    channel = await b.new_channel()
    for groups in placed.values():
        for group in groups:
            await b.group_add(group, channel)
    for port, groups in placed.items():
        with _client(port) as client:
            shard = set(client.execute_command("PUBSUB", "SHARDCHANNELS", "chat:g:*"))
            assert shard == {GROUP_PREFIX + group for group in groups}
            assert client.execute_command("PUBSUB", "CHANNELS") == []  # nothing unsharded
    # A send goes to the owner of the group's slot alone, and arrives.
    before = {port: _spublishes(port) for port in placed}
    target_port, (target, *_) = next(iter(placed.items()))
    await a.group_send(target, {"type": "chat.message", "n": 1})
    assert await asyncio.wait_for(b.receive(channel), 2) == {"type": "chat.message", "n": 1}
    after = {port: _spublishes(port) for port in placed}
    assert after[target_port] == before[target_port] + 1
    assert all(after[port] == before[port] for port in placed if port != target_port)


def _pubsub_clients(port: int) -> set[str]:
    with _client(port) as client:
        return {str(c["id"]) for c in client.client_list(_type="pubsub")}


async def test_a_lost_shard_is_mended_alone_and_the_layer_told_which_rooms(
    redis_cluster: Any, two_processes: tuple[ChatChannelLayer, ChatChannelLayer]
) -> None:
    """A master drops the feed's connections: that shard's channels are subscribed again,
    the layer hears that those rooms (and only those) may have lost messages, so their
    sockets catch up; the other shards' connections are left alone, delivering throughout."""
    a, b = two_processes
    placed = groups_on_every_master(redis_cluster, per_master=1)
    channel = await b.new_channel()
    for (group,) in placed.values():
        await b.group_add(group, channel)
    told: list[set[str] | None] = []
    lost = asyncio.Event()
    real = b.feed_lost

    def feed_lost(channels: Collection[str] | None = None) -> None:
        told.append(None if channels is None else set(channels))
        lost.set()
        real(channels)

    b.feed_lost = feed_lost  # type: ignore[method-assign]
    victim, *healthy = placed
    before = {port: _pubsub_clients(port) for port in healthy}
    with _client(victim) as client:
        assert client.client_kill_filter(_type="pubsub") >= 1
    await asyncio.wait_for(lost.wait(), 10)
    (channels,) = told  # the rooms on the victim (and this process's own channel, if there)
    assert channels is not None
    assert {c for c in channels if c.startswith(GROUP_PREFIX)} == {GROUP_PREFIX + placed[victim][0]}
    assert {port: _pubsub_clients(port) for port in healthy} == before
    for port, (group,) in placed.items():
        await a.group_send(group, {"type": "chat.message", "port": port})
        assert await asyncio.wait_for(b.receive(channel), 5) == {
            "type": "chat.message",
            "port": port,
        }
