"""Publishes from this process's sockets, stored in batches.

Every stored message costs a transaction's commit, and seqs are assigned under
each room's row lock. Rather than a thread and a transaction per publish, this
process keeps at most PUBLISH_IN_FLIGHT transactions in flight; publishes that
arrive meanwhile wait, and the next transaction stores them together, for all
their rooms at once. A room is in at most one transaction at a time, so one client's
publishes keep their order. Under light load a batch holds one publish and adds no delay.
A batch that is one statement on PostgreSQL is awaited on the event loop
(web.actions.ado_send_messages); the others (a sender joining a room, a mention, SQLite)
run on the publisher's own threads (StoreThreads: web.actions.do_send_messages), each
keeping a pooled database connection from batch to batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connections

from project import metrics
from realtime.process import SHUTDOWN_WAIT, get_process
from realtime.tasks import answer_each, spawn
from web.actions import (
    Outgoing,
    SentMessage,
    ado_send_messages,
    do_send_messages,
    stores_in_one_statement,
)
from web.errors import ApiError

logger = logging.getLogger(__name__)

# A store thread keeps its pooled connection between batches, and hands it back to the pool
# after this long idle, and at least this often when busy (then the pool's lifetime rules
# apply to it as to the others).
KEEP_CONNECTION_SECONDS = 60.0

T = TypeVar("T")
Waiting = tuple[Outgoing, asyncio.Future[SentMessage]]
Job = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], contextvars.Context, Callable[[], Any]]


async def send_messages(batch: list[Outgoing]) -> list[SentMessage | ApiError]:
    """Store a batch: awaited on the event loop when it is one statement on PostgreSQL
    (web.actions.ado_send_messages), else on one of the publisher's threads
    (web.actions.do_send_messages: a sender joining a room, a mention, SQLite)."""
    process = get_process()
    if process.database.usable() and _publishes_on_loop() and stores_in_one_statement(batch):
        # Not shielded (a task and two turns of the loop): a lane is not cancelled while it
        # stores, unless the shutdown's wait for it ran out (Publisher.aclose).
        return await ado_send_messages(batch, process.database)
    return await process.publisher.threads.run(lambda: do_send_messages(batch))


def _publishes_on_loop() -> bool:
    """Whether the channel layer's broadcast, called on the event loop, never blocks it."""
    transport = getattr(get_channel_layer(), "transport", None)
    return transport is not None and bool(transport.publishes_on_loop())


class StoreThreads:
    """A few threads that run the publisher's batches, each keeping its pooled database
    connection from one batch to the next.

    By hand rather than sync_to_async on the default executor: at low rates every batch
    wakes a sleeping thread, and the executor's path there and back (its submit, a
    concurrent Future chained to the loop's) cost 100-200 us of CPU per call more than a
    SimpleQueue and one call_soon_threadsafe (docs/performance.md).
    """

    def __init__(self) -> None:
        self.jobs: SimpleQueue[Job | None] = SimpleQueue()
        self.threads: list[threading.Thread] = []  # started and closed on the loop's thread

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Run `call` on a store thread, in a copy of the caller's context."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        # One thread per transaction in flight: a batch never waits for a thread.
        if len(self.threads) < settings.PUBLISH_IN_FLIGHT:
            self._start()
        self.jobs.put((loop, future, contextvars.copy_context(), call))
        return future

    def close(self) -> None:
        """Let each thread end once its batch (if any) is done; not waited for."""
        for _ in self.threads:
            self.jobs.put(None)
        self.threads = []

    def _start(self) -> None:
        thread = threading.Thread(target=self._work, name=f"store-{len(self.threads)}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _work(self) -> None:
        release_at = time.monotonic() + KEEP_CONNECTION_SECONDS
        while True:
            try:
                job = self.jobs.get(timeout=KEEP_CONNECTION_SECONDS)
            except Empty:
                _hand_back()  # idle: the connection goes back to the pool
                continue
            if job is None:
                break
            loop, future, context, call = job
            try:
                outcome: tuple[bool, Any] = (True, context.run(call))
            except Exception as error:  # the waiter raises it, not this thread
                outcome = (False, error)
            # Not Django's hand-back after every batch (CONN_MAX_AGE=0 with the pool): taking
            # the connection again cost about 100 us of CPU a batch. One that failed goes
            # back (or is closed) at once.
            now = time.monotonic()
            failed = any(c.errors_occurred for c in connections.all(initialized_only=True))
            if failed or now >= release_at:
                _hand_back()
                release_at = now + KEEP_CONNECTION_SECONDS
            # The last thing before waiting again: the loop wakes to a free GIL.
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile (tests)
                loop.call_soon_threadsafe(_settle, future, *outcome)
        _hand_back()


def _hand_back() -> None:
    """This thread's connections back to the pool (closed, without one)."""
    try:
        connections.close_all()
    except Exception:  # a store thread that died would leave every later batch waiting
        logger.exception("a store thread could not hand its database connection back")


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Publisher:
    """This process's publishes: waiting for a transaction, or in one.

    Up to PUBLISH_IN_FLIGHT lanes store batches, each a task that takes the next batch as
    soon as its last one is stored, and ends when nothing is waiting. A batch thus waits for
    no turn of the event loop besides the database's answer: under load each turn is long
    (it carries the fan-out of a batch), and the task per batch and the shield's task that
    this replaces cost three turns a batch, which made batches larger, turns longer again,
    and scenario 3's latency jump (docs/performance.md, "Lanes").
    """

    def __init__(self) -> None:
        # room id -> publishes waiting for it, in arrival order (rooms in order of first arrival)
        self.waiting: dict[int, list[Waiting]] = {}
        self.busy: set[int] = set()  # rooms in a transaction now
        self.lanes: set[asyncio.Task[None]] = set()
        self.starting: asyncio.AbstractEventLoop | None = None  # a lane is about to start there
        self.threads = StoreThreads()

    @property
    def in_flight(self) -> int:
        """Lanes storing (or about to)."""
        return len(self.lanes)

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
        if self.starting is not loop:
            # Its first step comes later in this turn of the loop: publishes read in the
            # same turn go together.
            self._start_lane(loop)
        return future

    def _start_lane(self, loop: asyncio.AbstractEventLoop) -> None:
        if len(self.lanes) < settings.PUBLISH_IN_FLIGHT:
            self.starting = loop
            # Its own task: the publisher whose arrival started it does not own the batches.
            self.lanes.add(spawn(self._lane(), name="publish lane"))

    async def _lane(self) -> None:
        self.starting = None
        try:
            while batch := list(self._take_batch()):
                rooms = {o.room.pk for o, _ in batch}
                self.busy.update(rooms)
                if self.starting is None and any(r not in self.busy for r in self.waiting):
                    self._start_lane(asyncio.get_running_loop())  # for what this one left
                started = time.perf_counter()
                try:
                    # Looked up here, not bound at import: tests wrap it to watch the batches.
                    await answer_each([f for _, f in batch], send_messages([o for o, _ in batch]))
                finally:
                    self.busy.difference_update(rooms)
                    metrics.PUBLISH_BATCH_SIZE.observe(len(batch))
                    metrics.PUBLISH_BATCH_SECONDS.observe(time.perf_counter() - started)
        finally:
            self.lanes.discard(asyncio.current_task())  # type: ignore[arg-type]  # a lane's own

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

    async def aclose(self) -> None:
        """Let the lanes store what they hold, within SHUTDOWN_WAIT: a batch whose statement
        committed is broadcast even when the process is stopping. Then cancel what is left."""
        lanes = set(self.lanes)
        if lanes:
            await asyncio.wait(lanes, timeout=SHUTDOWN_WAIT)
        for lane in lanes:
            lane.cancel()
        self.threads.close()


async def publish(outgoing: Outgoing) -> SentMessage:
    """Store one publish through this process's publisher."""
    return await get_process().publisher.publish(outgoing)


def enqueue(outgoing: Outgoing) -> asyncio.Future[SentMessage]:
    """Queue one publish with this process's publisher (see Publisher.enqueue)."""
    return get_process().publisher.enqueue(outgoing)
