"""This process's room access checks, made in batches (web/room_checks.py).

A socket checks a room the first time it subscribes to it or publishes to it. Checks asked
for while a batch is under way wait, and the next batch answers all of them with one thread
hop and two queries: a thousand sockets opening at once cost a handful of queries, where
one check each would queue a thousand queries on the thread that runs them. Under light
load a batch holds one check and adds no delay, as with the publisher's batches.
"""

from __future__ import annotations

import asyncio

from django.contrib.auth.models import User

from realtime.process import get_process
from realtime.tasks import answer_each, spawn
from web.access import read_in_thread
from web.models import Room
from web.room_checks import get_rooms_for_users

BATCH_MAX = 1000  # checks per batch; more wait for the next

aget_rooms_for_users = read_in_thread(get_rooms_for_users)

Waiting = tuple[User, str, "asyncio.Future[Room]"]


class RoomChecks:
    """Checks waiting for a batch, and whether one is under way (one at a time: they would
    queue on the same thread anyway)."""

    def __init__(self) -> None:
        self.waiting: list[Waiting] = []
        self.running = False

    async def check(self, user: User, slug: str) -> Room:
        """The room if the user may use it; NotFound or Forbidden otherwise."""
        future: asyncio.Future[Room] = asyncio.get_running_loop().create_future()
        self.waiting.append((user, slug, future))
        if not self.running:
            self.running = True
            # Later in this turn of the loop: checks asked in the same turn go together.
            asyncio.get_running_loop().call_soon(self._start)
        return await future

    def _start(self) -> None:
        batch = [w for w in self.waiting[:BATCH_MAX] if not w[2].done()]
        del self.waiting[:BATCH_MAX]
        if not batch and not self.waiting:
            self.running = False
            return
        spawn(self._run(batch), name="room checks")

    async def _run(self, batch: list[Waiting]) -> None:
        try:
            pairs = [(user, slug) for user, slug, _ in batch]
            await answer_each([f for *_, f in batch], aget_rooms_for_users(pairs))
        finally:
            self._start()


async def check_room(user: User, slug: str) -> Room:
    """The room if the user may use it (through this process's batches); NotFound or
    Forbidden otherwise."""
    checks: RoomChecks = get_process().room_checks
    return await checks.check(user, slug)
