"""Publishes from this process's sockets, stored in batches per room.

Seqs are assigned under the room's row lock, so publishes to one room are stored
one transaction after another, and each transaction costs a commit (a WAL flush).
Rather than queue a thread per publish behind the lock, this process keeps at most
one transaction in flight per room; publishes that arrive meanwhile wait, and the
next transaction stores all of them at once (web.actions.do_send_messages), in
arrival order. Under light load a batch holds one publish and adds no delay.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from django.conf import settings

from web.actions import Outgoing, SentMessage, do_send_messages
from web.errors import ApiError

# Each batch on the thread pool with its own pooled connection: one slow room does not hold
# up the others.
send_messages = database_sync_to_async(do_send_messages, thread_sensitive=False)


@dataclass(eq=False)
class RoomQueue:
    waiting: list[tuple[Outgoing, asyncio.Future[SentMessage]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


_queues: dict[int, RoomQueue] = {}


async def publish(outgoing: Outgoing) -> SentMessage:
    """Store one publish (with the others waiting for its room) and return its result."""
    loop = asyncio.get_running_loop()
    room_id = outgoing.room.pk
    queue = _queues.get(room_id)
    if queue is None:
        queue = _queues[room_id] = RoomQueue()
    future: asyncio.Future[SentMessage] = loop.create_future()
    if len(queue.waiting) >= settings.PUBLISH_BATCH_MAX:
        # The database is slow or stuck: drop what nobody waits for any more (their
        # clients got `unavailable` and will retry with the same client_msg_id).
        queue.waiting = [(o, f) for o, f in queue.waiting if not f.done()]
    queue.waiting.append((outgoing, future))
    if queue.task is None:
        # A fresh context: the first publisher's task must not own the batches of others.
        queue.task = loop.create_task(_store(room_id, queue), context=contextvars.Context())
    return await future


async def _store(room_id: int, queue: RoomQueue) -> None:
    batch: list[tuple[Outgoing, asyncio.Future[SentMessage]]] = []
    try:
        while queue.waiting:
            limit = settings.PUBLISH_BATCH_MAX
            batch = [(o, f) for o, f in queue.waiting[:limit] if not f.done()]
            del queue.waiting[:limit]
            if not batch:
                continue
            try:
                results = await send_messages([o for o, _ in batch])
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, ApiError):
                    future.set_exception(result)
                else:
                    future.set_result(result)
    finally:
        queue.task = None
        # Normally nothing is left; after a cancel (the loop shutting down) nobody may hang.
        for _, future in [*batch, *queue.waiting]:
            if not future.done():
                future.cancel()
        if _queues.get(room_id) is queue:
            del _queues[room_id]
