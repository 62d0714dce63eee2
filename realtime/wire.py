"""Writing ready-made websocket frames to a socket without a per-recipient coroutine.

The fan-out path encodes a message's frame once (server frames are unmasked,
and permessage-deflate is off, so the bytes are the same for every socket) and
writes those bytes straight to each transport, which is what a bare
`websockets.broadcast` does. That needs uvicorn's websockets-sansio protocol,
found behind the ASGI `send` callable. Any other server (daphne in `make run`,
Channels' test communicator) gets the portable path: one ASGI send per
recipient, scheduled in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from django.conf import settings
from websockets.frames import Frame, Opcode
from websockets.protocol import State

# Past this much queued for one socket it is too slow to keep up. Read once: write() is the
# hot path, once per message and socket.
SLOW_BUFFER_BYTES: int = settings.SLOW_CLIENT_BUFFER_BYTES
SLOW_PENDING_SENDS: int = settings.SLOW_CLIENT_PENDING_SENDS
# How long frames may wait to share one write with later ones (FANOUT_WRITE_DELAY_SECONDS).
# 0: to the end of the event loop's turn, which adds no delay.
WRITE_DELAY: float = settings.FANOUT_WRITE_DELAY_SECONDS


def text_frame(text: str) -> bytes:
    """A complete unmasked text frame carrying `text`."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


class Writer(Protocol):
    def write(self, frame: bytes, text: str) -> bool:
        """Queue one message for the socket; False when the socket cannot keep up."""

    def flush(self) -> None:
        """Hand what write() queued to the socket now (before any other send to it)."""

    def close_now(self, code: int, reason: str) -> bool:
        """Queue a close frame behind what is buffered, and drop the connection if the
        client has not read up to it within settings.CLOSE_GRACE_SECONDS. False if it cannot."""


class DirectWriter:
    """Writes frame bytes to a uvicorn websockets-sansio connection's transport.

    Frames written in one turn of the event loop (several messages read from the feed
    at once, a batch of publishes) go to each socket as one write: one system call per
    socket per turn, not per message. The writes happen when the turn's other
    callbacks have run (loop.call_soon), so nothing waits on a timer, unless
    FANOUT_WRITE_DELAY_SECONDS asks frames to wait that long for company (Centrifugo's
    write delay): under load, messages of several turns then share a write.
    """

    __slots__ = ("pending", "pending_bytes", "proto")

    def __init__(self, proto: Any):
        self.proto = proto
        self.pending: list[bytes] | None = None
        self.pending_bytes = 0

    def write(self, frame: bytes, text: str) -> bool:
        proto = self.proto
        transport = proto.transport
        if proto.close_sent or proto.conn.state is not State.OPEN or transport.is_closing():
            return True  # closing anyway; its disconnect cleans up
        if transport.get_write_buffer_size() + self.pending_bytes > SLOW_BUFFER_BYTES:
            return False
        if self.pending is None:
            self.pending = [frame]
            _cork(self)
        else:
            self.pending.append(frame)
        self.pending_bytes += len(frame)
        return True

    def flush(self) -> None:
        pending = self.pending
        if pending is None:
            return
        self.pending = None
        self.pending_bytes = 0
        transport = self.proto.transport
        # Nothing may follow a close frame; the client resumes with `since` instead.
        if not (self.proto.close_sent or transport.is_closing()):
            transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close_now(self, code: int, reason: str) -> bool:
        self.flush()
        proto = self.proto
        if proto.close_sent or proto.transport.is_closing():
            return True
        proto.conn.send_close(code, reason)
        proto.transport.write(b"".join(proto.conn.data_to_send()))
        proto.close_sent = True
        asyncio.get_running_loop().call_later(settings.CLOSE_GRACE_SECONDS, proto.transport.abort)
        return True


_corked: list[DirectWriter] = []


def _cork(writer: DirectWriter) -> None:
    if not _corked:
        if WRITE_DELAY > 0:
            asyncio.get_running_loop().call_later(WRITE_DELAY, _uncork)
        else:
            asyncio.get_running_loop().call_soon(_uncork)
    _corked.append(writer)


def _uncork() -> None:
    writers = _corked[:]
    _corked.clear()
    for writer in writers:
        writer.flush()


class AsgiWriter:
    """Portable fallback: one ASGI send per message, run in order as tasks."""

    __slots__ = ("pending", "send")

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]]):
        self.send = send
        # Kept until done (asyncio holds tasks weakly); their number is the backlog.
        self.pending: set[asyncio.Future[None]] = set()

    def write(self, frame: bytes, text: str) -> bool:
        if len(self.pending) >= SLOW_PENDING_SENDS:
            return False
        task = asyncio.ensure_future(self.send({"type": "websocket.send", "text": text}))
        self.pending.add(task)
        task.add_done_callback(self._done)
        return True

    def flush(self) -> None:
        pass  # every write is an ASGI send already scheduled in order

    def close_now(self, code: int, reason: str) -> bool:
        return False  # nothing to reach below ASGI: the caller closes through it

    def _done(self, task: asyncio.Future[None]) -> None:
        self.pending.discard(task)
        if not task.cancelled():
            task.exception()  # a send to a socket that just closed; its disconnect cleans up


def writer_for(send: Callable[[dict[str, Any]], Awaitable[None]]) -> Writer:
    """The fastest writer for an accepted connection's ASGI `send`."""
    proto = getattr(send, "__self__", None)
    if _is_sansio(proto):
        return DirectWriter(proto)
    return AsgiWriter(send)


def _is_sansio(proto: Any) -> bool:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # pragma: no cover -- uvicorn is a dependency
        return False
    # Only when no extension (permessage-deflate) was negotiated: then frames are byte-identical.
    return isinstance(proto, WebSocketsSansIOProtocol) and not proto.conn.extensions
