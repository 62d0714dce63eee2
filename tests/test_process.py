"""What a process keeps is one object, closed by the ASGI lifespan's shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

from channels.layers import get_channel_layer

from project.asgi import application
from realtime import tasks
from realtime.layer import Subscription
from realtime.process import get_process


class NullWriter:
    def write(self, frame: bytes, text: str) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close_now(self, code: int, reason: str) -> bool:
        return True


async def run_lifespan(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in messages:
        inbox.put_nowait(message)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(application({"type": "lifespan"}, inbox.get, send), 10)
    return sent


async def test_shutdown_cancels_background_tasks_and_empties_the_channel_layer() -> None:
    forever = tasks.spawn(asyncio.Event().wait(), name="waits forever")
    layer = get_channel_layer()
    sub = Subscription("room.1", NullWriter(), lambda sub: None)
    await layer.join(sub)
    before = get_process()

    sent = await run_lifespan([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert forever.cancelled()
    assert "room.1" not in layer.fanout.rooms
    assert get_process() is not before  # a new one is made if the process goes on (tests)
