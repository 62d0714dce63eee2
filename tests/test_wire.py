"""DirectWriter: frames queued in one turn of the event loop reach a socket in one write."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from realtime import wire
from realtime.wire import DirectWriter, text_frame


@dataclass
class Conn:
    """What DirectWriter reads of uvicorn's websockets-sansio protocol, on a real socket."""

    transport: Any
    conn: ServerProtocol = field(default_factory=ServerProtocol)
    close_sent: bool = False
    writes: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn.state = State.OPEN
        real_write = self.transport.write

        def write(data: bytes) -> None:
            self.writes.append(bytes(data))
            real_write(data)

        self.transport.write = write


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Conn, socket.socket]]:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    theirs.setblocking(False)
    yield Conn(transport), theirs
    transport.abort()
    theirs.close()


async def read_frames(sock: socket.socket, count: int) -> list[Frame]:
    """Read `count` frames as a websocket client would parse them."""
    client = ClientProtocol(parse_uri("ws://test/"))
    client.state = State.OPEN
    client.parser = client.parse()  # frames from here on, not the handshake's response
    next(client.parser)
    frames: list[Frame] = []
    loop = asyncio.get_running_loop()
    while len(frames) < count:
        client.receive_data(await asyncio.wait_for(loop.sock_recv(sock, 65536), 2))
        frames += [e for e in client.events_received() if isinstance(e, Frame)]
    return frames


def text(frame: Frame) -> str:
    return bytes(frame.data).decode()


async def test_frames_of_one_turn_go_out_in_one_write_in_order(
    pair: tuple[Conn, socket.socket],
) -> None:
    conn, peer = pair
    writer = DirectWriter(conn)
    for i in range(5):
        assert writer.write(text_frame(f"m{i}"), f"m{i}")
    assert conn.writes == []  # nothing yet: the loop has not turned
    await asyncio.sleep(0)
    assert len(conn.writes) == 1
    frames = await read_frames(peer, 5)
    assert [text(f) for f in frames] == [f"m{i}" for i in range(5)]


async def test_a_write_delay_lets_frames_of_later_turns_share_the_write(
    pair: tuple[Conn, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "WRITE_DELAY", 0.05)
    conn, peer = pair
    writer = DirectWriter(conn)
    for i in range(3):
        assert writer.write(text_frame(f"m{i}"), f"m{i}")
        await asyncio.sleep(0.005)  # each frame in a turn of its own
    assert conn.writes == []  # still waiting for company
    await asyncio.sleep(0.08)
    assert len(conn.writes) == 1
    frames = await read_frames(peer, 3)
    assert [text(f) for f in frames] == ["m0", "m1", "m2"]


async def test_flush_sends_queued_frames_before_the_next_send(
    pair: tuple[Conn, socket.socket],
) -> None:
    conn, peer = pair
    writer = DirectWriter(conn)
    writer.write(text_frame("queued"), "queued")
    writer.flush()  # what the consumer does before any send of its own
    conn.transport.write(text_frame("after"))
    await asyncio.sleep(0)
    frames = await read_frames(peer, 2)
    assert [text(f) for f in frames] == ["queued", "after"]
    assert len(conn.writes) == 2  # the loop's own flush found nothing left


async def test_close_now_sends_queued_frames_then_the_close_and_nothing_after(
    pair: tuple[Conn, socket.socket],
) -> None:
    conn, peer = pair
    writer = DirectWriter(conn)
    writer.write(text_frame("last"), "last")
    assert writer.close_now(4002, "too slow")
    assert conn.close_sent
    writer.write(text_frame("never"), "never")
    await asyncio.sleep(0)
    first, close = await read_frames(peer, 2)
    assert first.data == b"last"
    assert close.opcode is Opcode.CLOSE
    assert Close.parse(bytes(close.data)).code == 4002
    assert len(conn.writes) == 2


async def test_a_socket_too_far_behind_is_refused(pair: tuple[Conn, socket.socket]) -> None:
    conn, _ = pair
    writer = DirectWriter(conn)
    big = text_frame("x" * 60_000)
    accepted = 0
    while writer.write(big, "") and accepted < 100:
        accepted += 1
    assert 0 < accepted < 100  # refused once the queue passes SLOW_BUFFER_BYTES
