"""What one server process keeps, in one object: made on first use, closed at shutdown.

The process's publisher (realtime/publisher.py), its presence (realtime/presence.py),
its background tasks, the periodic credential recheck, the database sweep, its users'
limits and the client of the shared limits, its open chat sockets and whether it is
draining (realtime/drain.py), and the readiness check's Redis client (realtime/health.py)
live here rather than in module globals; the channel layer (realtime/layer.py: groups,
subscriptions, Redis connections) is the other per-process object, which Channels keeps.
The ASGI lifespan (`lifespan` below, routed in project/asgi.py) installs the drain's
SIGTERM handler and sets the garbage collector (realtime/garbage.py) at startup; its
shutdown closes both objects: uvicorn runs it after the last connection is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from project import metrics

if TYPE_CHECKING:
    from realtime.health import Health
    from realtime.presence import Presence
    from realtime.publisher import Publisher
    from realtime.room_checks import RoomChecks
    from web.models.async_database import AsyncDatabase

logger = logging.getLogger(__name__)

SHUTDOWN_WAIT = 5.0  # seconds the background tasks get to finish at shutdown


class Process:
    def __init__(self) -> None:
        from realtime.health import Health  # they use get_process() themselves
        from realtime.presence import Presence
        from realtime.publisher import Publisher
        from realtime.room_checks import RoomChecks
        from web.models.async_database import AsyncDatabase

        self.publisher: Publisher = Publisher()
        # The store's connections on the event loop (web/models/async_database.py).
        self.database: AsyncDatabase = AsyncDatabase()
        self.room_checks: RoomChecks = RoomChecks()  # rooms' access checks, in batches
        # Who is online in which room: this process's sockets, heartbeats, batched diffs.
        self.presence: Presence = Presence()
        self.tasks: set[asyncio.Task[Any]] = set()  # see realtime/tasks.py
        self.recheck: asyncio.Task[None] | None = None  # realtime/recheck.py
        self.sweep: asyncio.Task[None] | None = None  # realtime/deadlines.py
        self.users: dict[object, Any] = {}  # user id -> limits.UserState, while connected here
        self.cluster_limits: Any = None  # cluster_limits.ClusterLimits, with REDIS_URL
        # (user id, room id) -> when this process last relayed their typing (limits.py)
        self.typing_sent: dict[tuple[object, int], float] = {}
        # Open chat sockets, oldest first (a dict as an ordered set): the drain closes them in
        # that order. Set from SIGTERM until exit: not ready, new sockets refused.
        self.sockets: dict[Any, None] = {}
        self.draining = False
        self.health: Health = Health()  # the readiness check's own Redis client

    async def close(self) -> None:
        """Cancel the background tasks of the running loop and wait for them, bounded."""
        loop = asyncio.get_running_loop()
        # Its members leave Redis now, not at their expiry (bounded; its loop is a task).
        with contextlib.suppress(Exception):
            await self.presence.aclose()
        # First the batches being stored: one whose statement committed is still broadcast.
        await self.publisher.aclose()
        mine = [t for t in self.tasks if t.get_loop() is loop and t is not asyncio.current_task()]
        for task in mine:
            task.cancel()
        if mine:
            await asyncio.wait(mine, timeout=SHUTDOWN_WAIT)
        with contextlib.suppress(Exception):
            await self.database.aclose()
        if self.cluster_limits is not None:
            with contextlib.suppress(Exception):
                await self.cluster_limits.aclose()
        with contextlib.suppress(Exception):
            await self.health.aclose()


_process: Process | None = None


def get_process() -> Process:
    """This process's state, made on first use."""
    global _process
    if _process is None:
        _process = Process()
    return _process


async def close_process() -> None:
    """Close this process's state and the channel layer (shutdown; tests)."""
    global _process
    from channels.layers import get_channel_layer

    if _process is not None:
        process, _process = _process, None
        await process.close()
    layer = get_channel_layer()
    if layer is not None and hasattr(layer, "close"):
        with contextlib.suppress(Exception):
            await layer.close()


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI lifespan protocol: at startup, take over SIGTERM for the drain; at shutdown,
    close what the process keeps."""
    from realtime import garbage
    from realtime.drain import install

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            install()
            garbage.tune()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await close_process()
            except Exception:
                logger.exception("closing the process failed")
            # With PROMETHEUS_MULTIPROC_DIR, its sockets stop counting in the pod's sum.
            metrics.process_exited()
            await send({"type": "lifespan.shutdown.complete"})
            return
