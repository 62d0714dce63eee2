"""Background tasks of this process, kept until they finish and their failures logged.

asyncio holds tasks only weakly: a task nobody references can be collected
mid-flight. Every task the realtime code starts goes through `spawn`, which
keeps it in the process's set (realtime/process.py) until it is done, and logs
an exception it ended with. Shutdown cancels those still running.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

from realtime.process import get_process
from web.errors import ApiError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Run `coro` in the background on the running loop; kept, and logged if it fails.

    It runs in a fresh context: the caller may be inside another task's (or, through
    sync_to_async, a thread's) context, which asgiref would read as nesting.
    """
    task = asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())
    get_process().tasks.add(task)
    task.add_done_callback(_finished)
    return task


def running() -> set[asyncio.Task[Any]]:
    """The tasks started with `spawn` that have not finished (a copy)."""
    return set(get_process().tasks)


def _finished(task: asyncio.Task[Any]) -> None:
    get_process().tasks.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logger.error("background task %s failed", task.get_name(), exc_info=error)


async def answer_each(
    futures: Sequence[asyncio.Future[Any]], call: Awaitable[Sequence[Any]]
) -> None:
    """Settle the futures waiting on one batched call (the publisher's, the room checks'):
    each gets its answer, an ApiError among the answers raised to its waiter, or all get the
    call's error; one still unanswered after that (the loop shutting down) is cancelled, so
    nobody hangs. A future already done (its waiter gave up) is left as it is."""
    try:
        answers = await call
    except Exception as error:
        for future in futures:
            if not future.done():
                future.set_exception(error)
    else:
        for future, answer in zip(futures, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, ApiError):
                future.set_exception(answer)
            else:
                future.set_result(answer)
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
