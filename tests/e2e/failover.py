"""What the Redis failover tests share (Sentinel, Cluster): writers that keep publishing through
the switch, and when and how long deliveries stopped."""

from __future__ import annotations

import asyncio
import itertools

from tests.e2e.faults import Ledger, ReturningClient
from tests.e2e.wsclient import ServerError


async def keep_writing(
    client: ReturningClient, ledger: Ledger, stop: asyncio.Event, pace: float
) -> None:
    """Publish one message every `pace` seconds until `stop`; a publish refused with
    `unavailable` while Redis switches is sent again (same client_msg_id)."""
    for n in itertools.count():
        if stop.is_set():
            return
        item = (f"{client.name}.{n}", f"{client.name} says {n}")
        while True:
            try:
                await client.publish_all([item], window=1, on_ack=ledger)
                break
            except ServerError as error:
                if error.frame.get("code") != "unavailable":
                    raise
                await asyncio.sleep(pace)
        await asyncio.sleep(pace)


def _message_times(client: ReturningClient, room: str) -> list[float]:
    return sorted(
        at
        for conn in client.conns
        for frame, at in zip(conn.frames, conn.arrived, strict=True)
        if frame.get("type") == "message" and frame.get("room") == room
    )


def delivered_since(client: ReturningClient, room: str, since: float) -> bool:
    return any(at > since for at in _message_times(client, room))


def longest_stall(client: ReturningClient, room: str, around: float) -> float:
    """The longest wait between two deliveries to the client, among those spanning `around`
    (the kill): from the last delivery before it to the first after, and on."""
    times = _message_times(client, room)
    before = [t for t in times if t <= around]
    after = [t for t in times if t > around]
    assert before, f"{client.name} got nothing before the kill"
    assert after, f"{client.name} got nothing after the kill"
    spans = [after[0] - before[-1]] + [b - a for a, b in itertools.pairwise(after)]
    return max(spans)
