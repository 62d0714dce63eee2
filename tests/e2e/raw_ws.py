"""A websocket client over a bare socket: the test decides when bytes are read."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct

from tests.e2e.servers import Pod
from tests.e2e.wsclient import Frame

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class RawWs:
    """A minimal RFC 6455 client: a handshake, masked text frames out, frames in on demand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None

    @classmethod
    async def connect(
        cls, pod: Pod, token: str, *, rcvbuf: int | None = None, limit: int = 2**16
    ) -> RawWs:
        """Open /ws/ on the pod; `rcvbuf` shrinks the kernel's receive buffer (and window)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                # Before connect, so the window it advertises is small from the first byte.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", pod.port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        except BaseException:
            sock.close()
            raise
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1:{pod.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        client = cls(reader, writer)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            client.abort()
            raise AssertionError(f"handshake refused: {head.decode(errors='replace')}")
        return client

    @property
    def local_port(self) -> int:
        port: int = self.writer.get_extra_info("sockname")[1]
        return port

    async def send(self, frame: Frame) -> None:
        await self._send(OP_TEXT, json.dumps(frame).encode())

    async def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 2**16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = int.from_bytes(mask * (n // 4 + 1), "big") >> (8 * (4 - n % 4))
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def receive(self) -> Frame | None:
        """The next text frame as JSON; None at a close frame or the end of the stream."""
        while True:
            try:
                first, second = await self.reader.readexactly(2)
                n = second & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(n)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None  # dropped without a close frame
            opcode = first & 0x0F
            if opcode == OP_TEXT:
                frame: Frame = json.loads(payload)
                return frame
            if opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return None
            if opcode == OP_PING:
                with contextlib.suppress(ConnectionError):
                    await self._send(OP_PONG, payload)

    async def until(self, kind: str) -> list[Frame]:
        """Every frame up to and including the first of type `kind`."""
        frames = []
        while True:
            frame = await self.receive()
            if frame is None:
                raise AssertionError(f"closed ({self.close_code}) before a {kind!r} frame")
            frames.append(frame)
            if frame["type"] == kind:
                return frames

    async def close(self) -> None:
        """The closing handshake: send a close frame, read to the server's, then hang up."""
        with contextlib.suppress(ConnectionError):
            await self._send(OP_CLOSE, struct.pack("!H", 1000))
            while await self.receive() is not None:
                pass
        self.abort()

    def abort(self) -> None:
        """Hang up without a closing handshake."""
        self.writer.transport.abort()
