"""A pod killed with SIGKILL while clients on both pods publish (docs/guarantees.md).

The test breaks only a pod it started itself. A `Ledger` (tests/e2e/faults.py)
records every acked publish and every delivery and checks, per client and room,
that nothing was lost, duplicated or reordered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from pytest_redis.executor import RedisExecutor

from tests.e2e.faults import Ledger, ReturningClient, redis_url
from tests.e2e.http_client import Http, history
from tests.e2e.servers import SpawnPod, Stack

pytestmark = pytest.mark.e2e


PER_CLIENT = 60


async def test_clients_of_a_killed_pod_come_back_on_the_other_with_every_message_exactly_once(
    stack: Stack,
    spawn_pod: SpawnPod,
    returning: Callable[..., ReturningClient],
    own_redis: RedisExecutor,
    room: str,
) -> None:
    env = {"REDIS_URL": redis_url(own_redis)}
    doomed, survivor = spawn_pod("pod-doomed", env), spawn_pod("pod-survivor", env)
    ledger = Ledger()
    clients = [
        returning(f"{user}-on-{home.name}", stack.tokens[user], [home, other], room)
        for home, other in ((doomed, survivor), (survivor, doomed))
        for user in ("alice", "bob", "charlie")
    ]
    for client in clients:
        await client.connection()

    async def publish(client: ReturningClient) -> None:
        items = [(f"{client.name}.{i}", f"{client.name} says {i}") for i in range(PER_CLIENT)]
        await client.publish_all(items, on_ack=ledger)

    async with asyncio.TaskGroup() as group:
        for client in clients:
            group.create_task(publish(client))
        # Mid-stream: a quarter of the messages acked, more in flight on both pods.
        await ledger.wait_for_acks(len(clients) * PER_CLIENT // 4)
        await asyncio.to_thread(doomed.kill)
    total = len(clients) * PER_CLIENT
    for client in clients:
        await client.wait_for_seq(total)

    stored = await history(Http(survivor.url, token=stack.tokens["alice"]), room)
    assert len(stored) == total
    for client in clients:
        ledger.delivered(client.name, room, client.frames, first=1)
    ledger.check(room, stored)
    # Those on the killed pod lost their connection once (no close frame) and came back.
    assert [c.close_codes for c in clients] == [[1006]] * 3 + [[]] * 3
    # And publishes they had in flight were sent again, on the other pod, with the same ids.
    assert sum(c.resent for c in clients[:3]) > 0
