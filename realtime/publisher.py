"""Publishes from this process's sockets, stored in batches.

Every stored message costs a transaction's commit, and seqs are assigned under
each room's row lock. Rather than a thread and a transaction per publish, this
process keeps at most PUBLISH_IN_FLIGHT transactions in flight; publishes that
arrive meanwhile wait, and the next transaction stores them together, for all
their rooms at once (web.actions.do_send_messages). A room is in at most one
transaction at a time, so one client's publishes keep their order. Under light
load a batch holds one publish and adds no delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from channels.db import database_sync_to_async
from django.conf import settings

from realtime.process import get_process
from realtime.tasks import answer_each, spawn
from web.actions import Outgoing, SentMessage, do_send_messages

# Each batch on the thread pool with its own pooled connection.
send_messages = database_sync_to_async(do_send_messages, thread_sensitive=False)

Waiting = tuple[Outgoing, asyncio.Future[SentMessage]]


class Publisher:
    """This process's publishes: waiting for a transaction, or in one."""

    def __init__(self) -> None:
        # room id -> publishes waiting for it, in arrival order (rooms in order of first arrival)
        self.waiting: dict[int, list[Waiting]] = {}
        self.busy: set[int] = set()  # rooms in a transaction now
        self.in_flight = 0
        self.start_scheduled: asyncio.AbstractEventLoop | None = None  # a start is due there

    async def publish(self, outgoing: Outgoing) -> SentMessage:
        """Store one publish (with the others waiting) and return its result."""
        return await self.enqueue(outgoing)

    def enqueue(self, outgoing: Outgoing) -> asyncio.Future[SentMessage]:
        """Queue one publish now, behind those queued before it for its room; the future
        gets its result once it is stored."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SentMessage] = loop.create_future()
        queue = self.waiting.setdefault(outgoing.room.pk, [])
        if len(queue) >= settings.PUBLISH_BATCH_MAX:
            # The database is slow or stuck: drop what nobody waits for any more (their
            # clients got `unavailable` and will retry with the same client_msg_id).
            queue[:] = [(o, f) for o, f in queue if not f.done()]
        queue.append((outgoing, future))
        if self.start_scheduled is not loop:
            # Later in this turn of the loop: publishes read in the same turn go together.
            self.start_scheduled = loop
            loop.call_soon(self._start_batches)
        return future

    def _start_batches(self) -> None:
        self.start_scheduled = None
        while self.in_flight < settings.PUBLISH_IN_FLIGHT:
            batch = list(self._take_batch())
            if not batch:
                return
            self.in_flight += 1
            rooms = {o.room.pk for o, _ in batch}
            self.busy.update(rooms)
            # Its own task: the publisher whose arrival started it does not own the batch.
            spawn(self._store(batch, rooms), name="publish batch")

    def _take_batch(self) -> Iterator[Waiting]:
        """Up to PUBLISH_BATCH_MAX waiting publishes, whole rooms at a time, none of a busy
        room."""
        room_left = settings.PUBLISH_BATCH_MAX
        for room_id in list(self.waiting):
            if room_id in self.busy:
                continue
            queue = self.waiting[room_id]
            live = [(o, f) for o, f in queue[:room_left] if not f.done()]
            del queue[:room_left]
            if not queue:
                del self.waiting[room_id]
            yield from live
            room_left -= len(live)
            if room_left <= 0:
                return

    async def _store(self, batch: list[Waiting], rooms: set[int]) -> None:
        try:
            # Looked up here, not bound at import: tests wrap it to watch the batches.
            await answer_each([f for _, f in batch], send_messages([o for o, _ in batch]))
        finally:
            self.in_flight -= 1
            self.busy.difference_update(rooms)
            self._start_batches()


async def publish(outgoing: Outgoing) -> SentMessage:
    """Store one publish through this process's publisher."""
    return await get_process().publisher.publish(outgoing)


def enqueue(outgoing: Outgoing) -> asyncio.Future[SentMessage]:
    """Queue one publish with this process's publisher (see Publisher.enqueue)."""
    return get_process().publisher.enqueue(outgoing)
