"""One load-test websocket connection, as a bare asyncio protocol.

websockets' Sans-I/O ClientProtocol writes and checks the opening handshake and
builds the (masked) frames we send. Incoming frames are parsed here instead:
a server's frames are unmasked, so a frame is a two-to-ten-byte header and a
slice, a few times cheaper than a general parser, which is what lets one
process take tens of thousands of deliveries a second.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import ssl
import time
from array import array
from typing import Any, Protocol

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import WebSocketURI

from loadtest.report import Counters, SeqCheck

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
CLOSE_NORMAL = 1000
MAX_HANDSHAKE_BYTES = 64 * 1024

loads = orjson.loads
dumps = orjson.dumps
monotonic_ns = time.monotonic_ns


class Role(enum.Enum):
    SUBSCRIBER = "subscriber"
    PUBLISHER = "publisher"


class Phase(enum.Enum):
    CONNECTING = 0
    OPEN = 1
    CLOSED = 2


class Owner(Protocol):
    """What a connection needs from the worker that owns it (loadtest.worker.Worker)."""

    counters: Counters
    t0_ns: int
    recv_ms: array[int]  # when each timed message arrived, in ms since t0_ns
    latency_us: array[int]  # and how long it took, publisher to subscriber

    def on_open(self, conn: Connection) -> None: ...
    def on_subscribed(self, conn: Connection) -> None: ...
    def on_failed(self, conn: Connection, reason: str) -> None: ...
    def on_dropped(self, conn: Connection, reason: str) -> None: ...
    def on_ack(self, msg: dict[str, Any]) -> None: ...
    def on_error_frame(self, conn: Connection, msg: dict[str, Any]) -> None: ...
    def on_resync(self, conn: Connection) -> None: ...
    def on_protocol_error(self, conn: Connection, what: str) -> None: ...


class Connection(asyncio.Protocol):
    """A subscriber (one room, its seqs checked) or a publisher (no subscription)."""

    __slots__ = (
        "buf",
        "check",
        "frag",
        "handshake",
        "hbuf",
        "phase",
        "ready",
        "role",
        "room",
        "started_ns",
        "timer",
        "token",
        "transport",
        "uri",
        "worker",
    )

    def __init__(
        self, worker: Owner, role: Role, uri: WebSocketURI, token: str | None, room: str | None
    ) -> None:
        self.worker = worker
        self.role = role
        self.uri = uri
        self.token = token
        self.room = room
        self.check = SeqCheck() if role is Role.SUBSCRIBER else None
        self.transport: asyncio.Transport | None = None
        self.handshake: ClientProtocol | None = None
        self.phase = Phase.CONNECTING
        self.ready = False  # open, and for a subscriber, subscribed
        self.hbuf = b""
        self.buf = b""
        self.frag: list[bytes] | None = None
        self.started_ns = 0
        self.timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # create_connection gives a Transport
        if self.phase is Phase.CLOSED:  # timed out while the TCP connect was still pending
            transport.abort()  # type: ignore[attr-defined]
            return
        # No extensions offered: permessage-deflate would cost both sides CPU and memory.
        self.handshake = ClientProtocol(self.uri, extensions=None, max_size=None)
        request = self.handshake.connect()
        if self.token:
            request.headers["Authorization"] = f"Bearer {self.token}"
        self.handshake.send_request(request)
        transport.write(b"".join(self.handshake.data_to_send()))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.OPEN:
            self._frames(self.buf + data if self.buf else data)
        elif self.phase is Phase.CONNECTING:
            self._handshake(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        phase, self.phase = self.phase, Phase.CLOSED
        if self.timer is not None:
            self.timer.cancel()
        if phase is Phase.CONNECTING:
            self.worker.on_failed(self, "closed during handshake")
        elif phase is Phase.OPEN and not self.ready:
            self.worker.on_failed(self, "closed before subscribed")
        elif phase is Phase.OPEN:
            self.worker.on_dropped(self, "connection lost without a close frame")

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    # Sending

    def send(self, frame: dict[str, Any]) -> None:
        if self.phase is Phase.OPEN and self.transport is not None:
            payload = Frame(Opcode.TEXT, dumps(frame)).serialize(mask=True)
            self.transport.write(payload)

    def close(self) -> None:
        """Say goodbye and hang up without waiting for the server's close frame."""
        if self.transport is None or self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.OPEN:
            self.transport.write(
                Frame(Opcode.CLOSE, Close(CLOSE_NORMAL, "").serialize()).serialize(mask=True)
            )
        self.phase = Phase.CLOSED
        if self.timer is not None:
            self.timer.cancel()
        self.transport.close()

    def abort(self, reason: str) -> None:
        """Give up on a connection that did not become ready in time."""
        if self.phase is not Phase.CLOSED and not self.ready:
            self.phase = Phase.CLOSED
            self.worker.on_failed(self, reason)
            if self.transport is not None:
                self.transport.abort()

    # Receiving

    def _handshake(self, data: bytes) -> None:
        hbuf = self.hbuf + data
        end = hbuf.find(b"\r\n\r\n")
        if end < 0:
            self.hbuf = hbuf
            if len(hbuf) > MAX_HANDSHAKE_BYTES:
                self.abort("handshake response too large")
            return
        head, rest = hbuf[: end + 4], hbuf[end + 4 :]
        self.hbuf = b""
        status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/") else b"?"
        if status != b"101":
            self.abort(f"HTTP {status.decode('latin-1')}")
            return
        # websockets checks the rest: Upgrade, Connection, Sec-WebSocket-Accept, extensions.
        handshake = self.handshake
        assert handshake is not None  # noqa: S101 -- set in connection_made
        handshake.receive_data(head)
        handshake.events_received()
        if handshake.state is not State.OPEN:
            self.abort(f"bad handshake: {handshake.handshake_exc}")
            return
        self.handshake = None  # frees its parser; frames are ours from here on
        self.phase = Phase.OPEN
        self._opened()
        if rest:
            self._frames(rest)

    def _frames(self, buf: bytes) -> None:
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4]), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10]), 10
            if b1 & 0x80:
                self.worker.on_protocol_error(self, "masked frame from the server")
                self.close()
                return
            end = pos + head + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == OP_TEXT and b0 & 0x80:
                self._text(buf[pos + head : end])
            else:
                self._other(b0 & 0x80, opcode, buf[pos + head : end])
            if self.phase is not Phase.OPEN:
                return
            pos = end
        self.buf = buf[pos:] if pos < size else b""

    def _other(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY):
            self.frag = [payload]
        elif opcode == OP_CONT and self.frag is not None:
            self.frag.append(payload)
            if fin:
                whole, self.frag = b"".join(self.frag), None
                self._text(whole)
        elif opcode == OP_PING and self.transport is not None:
            self.transport.write(Frame(Opcode.PONG, payload).serialize(mask=True))
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005
            if self.ready:
                self.worker.on_dropped(self, f"server closed with {code}")
            else:
                self.worker.on_failed(self, f"server closed with {code}")
            self.close()

    def _opened(self) -> None:
        """The websocket is open (loadtest.socketio waits for Socket.IO's connect too)."""
        self.worker.on_open(self)

    def _text(self, payload: bytes) -> None:
        try:
            msg = loads(payload)
        except orjson.JSONDecodeError:
            self.worker.on_protocol_error(self, "unreadable frame")
            return
        self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        """One frame of docs/protocol.md, decoded."""
        try:
            kind = msg["type"]
        except (KeyError, TypeError):
            self.worker.on_protocol_error(self, "unreadable frame")
            return
        worker = self.worker
        if kind == "message":
            now = monotonic_ns()
            worker.counters.delivered += 1
            check, seq = self.check, msg.get("seq")
            if type(seq) is not int:
                worker.on_protocol_error(self, "message without an integer seq")
            elif check is not None and msg.get("room") == self.room:
                check.add(seq)
            body = msg.get("body")
            # Our publishers' bodies start with "t=<monotonic ns> ": latency needs no lookup.
            if isinstance(body, str) and body.startswith("t="):
                space = body.find(" ")
                try:
                    sent = int(body[2:space] if space > 0 else body[2:])
                except ValueError:
                    return
                worker.latency_us.append((now - sent) // 1000)
                worker.recv_ms.append((now - worker.t0_ns) // 1_000_000)
        elif kind == "ack":
            worker.on_ack(msg)
        elif kind == "subscribed":
            if self.check is not None:
                self.check.subscribed(msg.get("last_seq"))
            worker.on_subscribed(self)
        elif kind == "error":
            worker.on_error_frame(self, msg)
        elif kind == "resync":
            worker.on_resync(self)
        elif kind == "unsubscribed":
            worker.on_protocol_error(self, f"unsubscribed: {msg.get('reason', '?')}")


async def resolve(uri: WebSocketURI) -> tuple[str, int]:
    """Resolve the host once, not once per connection."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        uri.host, uri.port, type=socket.SOCK_STREAM
    )
    address = infos[0][4]
    return str(address[0]), int(address[1])


def tls_context(insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
