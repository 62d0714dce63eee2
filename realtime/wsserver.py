"""uvicorn's websockets-sansio protocol, holding less per open socket.

    uvicorn project.asgi:application --ws realtime.wsserver:WebSocketProtocol ...

An idle socket is mostly what the server keeps for it, so this subclass keeps
less of it; the protocol itself (parsing, handshake, keepalive, closing) is
uvicorn's and websockets' unchanged:

- its receive queue and its "writable" flag are small objects of our own rather
  than an asyncio.Queue (three deques, 760 bytes each) and an asyncio.Event (one);
- what is the same for every connection of a server (config, app, loop, logger,
  ...) is kept once, so an instance has few enough attributes for Python's compact
  layout instead of a dict of its own;
- keepalive pings are due on one timer per server, not a timer handle per socket
  (uvloop's handle and its bound callback: about 540 bytes each);
- once the handshake is done it lets go of the handshake request and response,
  and of the request's headers in the ASGI scope. The ASGI app reads headers at
  connect (realtime/auth.py) and nowhere after, and every copy of the scope shares
  the one list, so emptying it frees them all.

Without the `--ws` flag the product still works on uvicorn's own class (the fan-out's
direct writer, realtime/wire.py, serves both), at about 10 KB more per idle socket
(docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.server import ServerProtocol


class Inbox:
    """What the protocol needs of asyncio.Queue, for its one reader (the ASGI app's receive).

    uvicorn stops reading the socket while a message waits here, so it rarely holds more
    than one or two: a list does.
    """

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self.items:
            if self.waiter is not None:
                raise RuntimeError("Inbox has one reader")
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.pop(0)

    def empty(self) -> bool:
        return not self.items


class Gate:
    """What the protocol needs of asyncio.Event: a flag sends wait on while the socket's
    buffer is full. Waiters get a future only while it is shut."""

    __slots__ = ("is_open", "waiters")

    def __init__(self) -> None:
        self.is_open = True
        self.waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self.is_open

    def set(self) -> None:
        self.is_open = True
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self.is_open = False

    async def wait(self) -> bool:
        if self.is_open:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        try:
            await waiter
        finally:
            if self.waiters is not None and waiter in self.waiters:
                self.waiters.remove(waiter)
        return True


class Pinger:
    """When each socket of a server sends its next keepalive ping, served by one timer.

    Every socket waits the same interval (less its last round trip) between pings, so
    sockets enrolled later are due later, give or take a round trip: the dict, in
    enrolment order, is in due order near enough for each tick to stop at the first socket
    not due yet. A ping is thus at most one tick late (TICK, or a quarter of the interval
    when that is shorter). asyncio has no shared timer wheel to hand this to.
    """

    TICK = 1.0

    __slots__ = ("due", "loop", "tick", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float | None) -> None:
        self.loop = loop
        self.tick = min(self.TICK, (interval or self.TICK) / 4)
        self.due: dict[Any, float] = {}  # protocol -> loop time of its next ping
        self.timer: asyncio.TimerHandle | None = None

    def add(self, proto: Any, delay: float) -> None:
        self.due.pop(proto, None)  # re-enrolled at the end, where its new time belongs
        self.due[proto] = self.loop.time() + delay
        if self.timer is None:
            self.timer = self.loop.call_later(self.tick, self._ping_due)

    def discard(self, proto: Any) -> None:
        self.due.pop(proto, None)

    def _ping_due(self) -> None:
        self.timer = None
        now, ready = self.loop.time(), []
        for proto, at in self.due.items():
            if at > now:
                break
            ready.append(proto)
        for proto in ready:
            del self.due[proto]
            try:
                proto.send_keepalive_ping()
            except Exception:  # one socket's failure is not every other socket's
                proto.logger.exception("keepalive ping failed")
        if self.due:
            self.timer = self.loop.call_later(self.tick, self._ping_due)


@dataclass(slots=True, eq=False)
class Shared:
    """What the base class's __init__ copies onto every connection, the same for all of one
    server's connections."""

    config: Config
    app: Any
    loop: asyncio.AbstractEventLoop
    logger: logging.Logger
    root_path: str
    asgi_version: str
    app_state: dict[str, Any]
    server_state: ServerState
    ping_interval: float | None
    ping_timeout: float | None
    pinger: Pinger
    close_timeout: float = 10.0

    @property
    def connections(self) -> set[Any]:
        return self.server_state.connections

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        return self.server_state.tasks

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        # Read when needed: the server replaces this list every second (its Date header).
        return self.server_state.default_headers


_shared: weakref.WeakKeyDictionary[ServerState, Shared] = weakref.WeakKeyDictionary()


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """Keeps the server-wide attributes in one Shared object (read through __getattr__): with
    the rest under 30 attributes, an instance stays in Python's compact shared-key layout,
    about 1.3 KB less than the dict the base class's 34 attributes need."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        shared = _shared.get(server_state)
        if shared is None or shared.config is not config or shared.app_state is not app_state:
            shared = _shared[server_state] = _share(config, server_state, app_state, _loop)
        self.shared = shared
        # Per connection, as the base class's __init__ sets it up (uvicorn 0.54).
        self.transport = None  # type: ignore[assignment]
        self.server = None
        self.client = None
        self.scheme = None  # type: ignore[assignment]
        self.queue = Inbox()  # type: ignore[assignment]
        self.handshake_initiated = False
        self.handshake_complete = False
        self.close_sent = False
        self.disconnected = False
        self.close_timer = None
        self.initial_response = None
        self.conn = ServerProtocol(
            extensions=_extensions(config), max_size=config.ws_max_size, logger=shared.logger
        )
        self.read_paused = False
        self.writable = Gate()  # type: ignore[assignment]
        self.ping_timer = None
        self.pong_timer = None
        self.pending_ping_payload = None
        self.ping_sent_at = 0.0
        self.last_ping_rtt = 0.0
        self.frames = []
        self.curr_msg_data_type = "bytes"

    def __getattr__(self, name: str) -> Any:
        # Only for names the instance does not have: the Shared ones.
        if name == "shared":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.shared, name)

    async def send(self, message: Any) -> None:
        was_open = self.handshake_complete
        await super().send(message)
        if not was_open and self.handshake_complete:
            self.forget_handshake()

    def schedule_ping(self) -> None:
        assert self.ping_interval is not None  # noqa: S101 -- as the base class has it
        self.shared.pinger.add(self, max(0.0, self.ping_interval - self.last_ping_rtt))

    def stop_keepalive(self) -> None:
        self.shared.pinger.discard(self)
        super().stop_keepalive()

    def forget_handshake(self) -> None:
        """Drop what only the handshake needed (about 5 KB a socket)."""
        request = getattr(self, "request", None)
        if request is not None:
            # websockets' parser keeps the request in a generator's frame: empty its headers.
            request.headers.clear()
        self.request = self.response = None  # type: ignore[assignment]
        scope: Any = getattr(self, "scope", None)
        if scope is not None:
            scope["headers"].clear()


def _share(
    config: Config,
    server_state: ServerState,
    app_state: dict[str, Any],
    loop: asyncio.AbstractEventLoop | None,
) -> Shared:
    if not config.loaded:
        config.load()
    loop = loop or asyncio.get_event_loop()
    return Shared(
        config=config,
        app=config.loaded_app,
        loop=loop,
        logger=logging.getLogger("uvicorn.error"),
        root_path=config.root_path,
        asgi_version=config.asgi_version,
        app_state=app_state,
        server_state=server_state,
        ping_interval=config.ws_ping_interval,
        ping_timeout=config.ws_ping_timeout,
        pinger=Pinger(loop, config.ws_ping_interval),
    )


def _extensions(config: Config) -> list[Any]:
    if not config.ws_per_message_deflate:
        return []
    deflate = ServerPerMessageDeflateFactory(
        server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
    )
    return [deflate]
