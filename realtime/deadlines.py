"""Database calls from the event loop: each bounded by a deadline, and a sweep after errors.

A hung database answers nothing, so a websocket client would wait forever; `db`
turns that into DatabaseTimeout after DATABASE_DEADLINE_SECONDS, which the
consumer answers with `unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from channels.db import aclose_old_connections
from django.conf import settings
from django.db import DatabaseError

from realtime.process import get_process
from realtime.tasks import spawn

T = TypeVar("T")


class DatabaseTimeout(DatabaseError):
    """A database call outlived DATABASE_DEADLINE_SECONDS (a hung server answers nothing)."""


TIMED_OUT = "the database did not answer in time"


async def db(call: Awaitable[T]) -> T:
    """Await a database call, but no longer than the deadline: a client always gets an answer."""
    try:
        return await asyncio.wait_for(call, timeout=settings.DATABASE_DEADLINE_SECONDS)
    except TimeoutError:
        raise DatabaseTimeout(TIMED_OUT) from None


def deadline(future: asyncio.Future[T]) -> asyncio.TimerHandle:
    """The same bound for a future answered by a callback rather than awaited (a timer, not
    a task, per call): still pending at the deadline, it fails with DatabaseTimeout. Cancel
    the handle once the future is done."""
    return asyncio.get_running_loop().call_later(
        settings.DATABASE_DEADLINE_SECONDS, _expire, future
    )


def _expire(future: asyncio.Future[T]) -> None:
    if not future.done():
        future.set_exception(DatabaseTimeout(TIMED_OUT))


def sweep_connections() -> None:
    """Drop broken database connections, so the next call reconnects once the database is
    back. In the background, one at a time: with the database hung, it may not return soon."""
    process = get_process()
    if process.sweep is None or process.sweep.done():
        process.sweep = spawn(_bounded_sweep(), name="database connection sweep")


async def _bounded_sweep() -> None:
    with contextlib.suppress(DatabaseError):
        await db(aclose_old_connections())
