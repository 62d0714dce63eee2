"""The generator's Socket.IO mode: the same connections, over Socket.IO 4's wire protocol.

Used when --url is a Socket.IO endpoint (ws://host:port/socket.io/?EIO=4&transport=websocket),
against bench/baselines/socketio/server.js, whose events are named after docs/protocol.md's
frame types and carry those frames. Written by hand rather than with python-socketio's
client: over a websocket, Engine.IO 4 and Socket.IO 5 packets are a digit or two before a
JSON array ('0{...}' open, '40' connect, '42["event",{...}]' event, '2'/'3' ping/pong), and
the generator must read tens of thousands a second on one core with the same cheap frame
parser and the same loss, duplicate, order and latency accounting as for the other targets;
python-socketio's asyncio client would cost several times more per message than the server
being measured.
"""

from __future__ import annotations

from typing import Any

import orjson
from websockets.frames import Frame, Opcode

from loadtest.client import Connection, Phase

EIO_OPEN, EIO_CLOSE, EIO_PING, EIO_PONG, EIO_MESSAGE = b"0", b"1", b"2", b"3", b"4"
SIO_CONNECT, SIO_DISCONNECT, SIO_EVENT, SIO_CONNECT_ERROR = b"0", b"1", b"2", b"4"
PONG = Frame(Opcode.TEXT, EIO_PONG).serialize(mask=True)
CONNECT = Frame(Opcode.TEXT, EIO_MESSAGE + SIO_CONNECT).serialize(mask=True)


def is_socketio(url: str) -> bool:
    """Whether --url names a Socket.IO endpoint rather than the product's websocket."""
    return "/socket.io/" in url and "EIO=4" in url


class SocketIOConnection(Connection):
    """A Connection whose frames are Socket.IO events wrapped in Engine.IO packets."""

    __slots__ = ()

    def _opened(self) -> None:
        pass  # not ready until the server's '0' open packet and our namespace connect

    def send(self, frame: dict[str, Any]) -> None:
        if self.phase is Phase.OPEN and self.transport is not None:
            packet = b"42" + orjson.dumps([frame["type"], frame])
            self.transport.write(Frame(Opcode.TEXT, packet).serialize(mask=True))

    def _text(self, payload: bytes) -> None:
        if payload[:2] == b"42":  # the hot path: an event
            try:
                event = orjson.loads(payload[2:])
                self._dispatch(event[1])
            except (orjson.JSONDecodeError, IndexError, TypeError):
                self.worker.on_protocol_error(self, "unreadable Socket.IO event")
            return
        kind = payload[:1]
        if kind == EIO_PING:
            if self.transport is not None:
                self.transport.write(PONG)
        elif kind == EIO_OPEN:
            if self.transport is not None:
                self.transport.write(CONNECT)  # the main namespace, no auth payload
        elif payload[:2] == EIO_MESSAGE + SIO_CONNECT:
            self.worker.on_open(self)
        elif payload[:2] == EIO_MESSAGE + SIO_CONNECT_ERROR:
            self.abort(f"Socket.IO connect refused: {payload[2:80].decode(errors='replace')}")
        elif kind == EIO_CLOSE or payload[:2] == EIO_MESSAGE + SIO_DISCONNECT:
            self.worker.on_protocol_error(self, "Socket.IO disconnect")
