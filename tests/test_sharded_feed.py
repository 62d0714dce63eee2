"""The channel layer on a Redis Cluster (realtime/sharded_feed.py): sharded pub/sub, one
connection per master, and a rebuild that tells the layer when something may have been lost.

The layer's behaviour across processes is tests/test_layer.py's, run on a cluster too; here
is what only a cluster has. A real three-master cluster (tests/conftest.py `redis_cluster`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
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


async def test_a_lost_shard_connection_is_rebuilt_and_the_layer_told(
    redis_cluster: Any, two_processes: tuple[ChatChannelLayer, ChatChannelLayer]
) -> None:
    """The master drops the feed's connection: the feed comes back on every shard, the
    layer hears that anything may have been lost (its sockets catch up), and sends flow."""
    a, b = two_processes
    placed = groups_on_every_master(redis_cluster, per_master=1)
    channel = await b.new_channel()
    for (group,) in placed.values():
        await b.group_add(group, channel)
    lost = asyncio.Event()
    real = b.feed_lost

    def feed_lost() -> None:
        lost.set()
        real()

    b.feed_lost = feed_lost  # type: ignore[method-assign]
    victim = next(iter(placed))
    with _client(victim) as client:
        assert client.client_kill_filter(_type="pubsub") >= 1
    await asyncio.wait_for(lost.wait(), 10)
    for port, (group,) in placed.items():
        await a.group_send(group, {"type": "chat.message", "port": port})
        assert await asyncio.wait_for(b.receive(channel), 5) == {
            "type": "chat.message",
            "port": port,
        }
