"""Graceful drain: on SIGTERM the process turns not-ready, refuses new sockets, closes its open
ones with 1012 (service restart) spread over DRAIN_SECONDS, then lets uvicorn shut down.

Clients closed with 1012 reconnect (through the load balancer, to another pod) and
subscribe with `since`: nothing is lost, and the reconnections arrive spread over the
window rather than all at once.

Why wrap uvicorn's signal handler. uvicorn (0.54, uvicorn/server.py) installs
`Server.handle_exit` for SIGINT and SIGTERM with signal.signal; it only sets
`should_exit`, and the main loop then closes the listening socket and calls
`shutdown()` on every connection, which sends each websocket 1012 at once. The ASGI
lifespan's shutdown event comes after that, when the connections are gone: too late to
spread anything. So at lifespan startup (after uvicorn installed its handler, in the
main thread) `install` puts ours in front of it for SIGTERM: the drain runs first, and
uvicorn's handler is called when it is done, so uvicorn's own shutdown (connections,
--timeout-graceful-shutdown, lifespan shutdown, re-raising the signal) runs unchanged,
only later. SIGINT is left to uvicorn alone: Ctrl+C (or a second signal, see below)
stops at once. Under any other server nothing is installed and SIGTERM does what that
server does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any

from django.conf import settings

from project import metrics
from realtime.process import get_process
from realtime.tasks import spawn

logger = logging.getLogger(__name__)

# Closing one socket per event-loop turn would be thousands of timers a second with 15,000
# sockets; at most one batch per this many seconds instead.
MIN_STEP = 0.01


def install() -> bool:
    """Put the drain in front of uvicorn's SIGTERM handler; False (and nothing done) when the
    process is not a uvicorn server's main thread."""
    from uvicorn.server import Server

    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or not isinstance(getattr(previous, "__self__", None), Server):
        logger.info("not run by uvicorn: SIGTERM stops without a drain")
        return False
    uvicorn_exit: Callable[[int, FrameType | None], Any] = previous
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of the main thread: only schedule.
        loop.call_soon_threadsafe(start, lambda: uvicorn_exit(signum, frame))

    signal.signal(signal.SIGTERM, on_sigterm)
    return True


def start(then: Callable[[], object] | None = None) -> asyncio.Task[None] | None:
    """Begin draining (once); `then` is called when it is done (uvicorn's exit handler)."""
    process = get_process()
    if process.draining:
        if then is not None:
            # A second SIGTERM: stop now, as uvicorn would (the rest get 1012 at once).
            then()
        return None
    process.draining = True
    metrics.DRAINING.set(1)  # until the process exits
    window: float = settings.DRAIN_SECONDS
    logger.warning("SIGTERM: draining %d sockets over %.1f s", len(process.sockets), window)
    return spawn(_drain(window, then), name="drain")


async def _drain(window: float, then: Callable[[], object] | None) -> None:
    try:
        await close_spread(window)
    finally:
        logger.warning("drained; shutting down")
        if then is not None:
            then()


async def close_spread(window: float) -> None:
    """Ask every open socket to close, oldest first, evenly over `window` seconds.

    With n sockets left and t seconds, the next one closes now and the one after t/n
    later, so a constant set closes at 0, w/n, 2w/n, ...; sockets that leave on their own
    or arrive late (a handshake under way when the drain began) shift the rest. Returns
    when none is left or the window is over (uvicorn closes what remains, at once).
    """
    process = get_process()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    queue: deque[Any] = deque(process.sockets)
    asked: set[Any] = set()
    while True:
        while queue and queue[0] not in process.sockets:
            queue.popleft()  # gone by itself
        if not queue:
            late = [s for s in process.sockets if s not in asked]
            if not late:
                break
            queue.extend(late)
            continue
        left = deadline - loop.time()
        if left <= 0:
            count, pause = len(queue), 0.0
        else:
            per_socket = left / len(queue)
            count = min(len(queue), math.ceil(MIN_STEP / per_socket))
            pause = per_socket * count
        for _ in range(count):
            consumer = queue.popleft()
            asked.add(consumer)
            consumer.restart()
        if left <= 0:
            break
        await asyncio.sleep(pause)
    # Those answering a frame close when they have answered it; give them what is left of the
    # window, not more: after it uvicorn closes what remains.
    while process.sockets and loop.time() < deadline:  # noqa: ASYNC110 -- bounded; no event
        await asyncio.sleep(MIN_STEP * 10)


async def refuse(scope: dict[str, Any], send: Any) -> None:
    """Turn down a websocket handshake while draining: HTTP 503, so the client tries again
    (and the balancer sends it to another pod)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = b'{"error": {"code": "draining", "message": "this server is restarting"}}'
        headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
        await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # Servers without the extension answer a close before accept with 403.
        await send({"type": "websocket.close", "code": 1013})
