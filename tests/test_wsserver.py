"""realtime/wsserver.py: uvicorn's websockets-sansio protocol holding less per socket, served
by a real uvicorn server on a loopback port to a real websockets client."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.protocol import State
from websockets.uri import parse_uri

from realtime.wsserver import Gate, Inbox, WebSocketProtocol

App = Callable[[dict[str, Any], Any, Any], Any]


class Echo:
    """Accepts, records what it saw of the scope, echoes text, and keeps disconnect codes."""

    def __init__(self, name: str = "echo") -> None:
        self.name = name
        self.scopes: list[dict[str, Any]] = []
        self.headers_at_connect: list[int] = []
        self.disconnects: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        self.scopes.append(scope)
        self.headers_at_connect.append(len(scope["headers"]))
        while True:
            event = await receive()
            if event["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif event["type"] == "websocket.receive":
                text = event["text"]
                if text.startswith("flood "):
                    _, count, size = text.split()
                    for i in range(int(count)):
                        await send({"type": "websocket.send", "text": f"{i:08d}" + "x" * int(size)})
                else:
                    await send({"type": "websocket.send", "text": f"{self.name}:{text}"})
            else:
                self.disconnects.append(event["code"])
                return


@contextlib.asynccontextmanager
async def serving(app: App, **options: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, ws=WebSocketProtocol, lifespan="off", log_level="warning", **options
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110  # uvicorn offers a flag, not an event
            await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/ws/", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def raw_client(url: str, receive_buffer: int = 0) -> tuple[socket.socket, ClientProtocol]:
    """An open websocket from websockets' sans-I/O client on a plain socket: nothing reads
    for it unless the test does."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", int(url.split(":")[2].split("/")[0])))
    client = ClientProtocol(parse_uri(url), max_size=None)
    client.send_request(client.connect())
    await loop.sock_sendall(sock, b"".join(client.data_to_send()))
    while client.state is not State.OPEN:
        client.receive_data(await loop.sock_recv(sock, 65536))
    return sock, client


def protocols(server: uvicorn.Server) -> list[WebSocketProtocol]:
    return [p for p in server.server_state.connections if isinstance(p, WebSocketProtocol)]


async def test_it_serves_a_websocket_and_forgets_the_handshake_after_accept() -> None:
    app = Echo()
    async with serving(app) as (url, server), connect(url) as ws:
        await ws.send("hi")
        assert await ws.recv() == "echo:hi"
        (proto,) = protocols(server)
        assert app.headers_at_connect[0] >= 4  # host, upgrade, connection, key, ...
        # After accept the headers are gone from every copy of the scope, and so is the request.
        assert app.scopes[0]["headers"] == []
        assert proto.request is None
        assert proto.response is None
        assert proto.conn.state.name == "OPEN"
    await asyncio.sleep(0.1)
    assert app.disconnects == [1000]
    assert protocols(server) == []


async def test_the_date_header_is_the_servers_current_one() -> None:
    # Server-wide values are shared, but the Date header changes every second.
    dates = []
    async with serving(Echo()) as (url, _server):
        for pause in (0, 2.2):
            await asyncio.sleep(pause)
            async with connect(url) as ws:
                assert ws.response is not None
                dates.append(email.utils.parsedate_to_datetime(ws.response.headers["date"]))
    assert (dates[1] - dates[0]).total_seconds() >= 2


async def test_two_servers_in_one_process_keep_their_own_apps() -> None:
    async with (
        serving(Echo("a")) as (url_a, server_a),
        serving(Echo("b")) as (url_b, server_b),
        connect(url_a) as a,
        connect(url_b) as b,
    ):
        await a.send("1")
        await b.send("2")
        assert (await a.recv(), await b.recv()) == ("a:1", "b:2")
        assert len(protocols(server_a)) == len(protocols(server_b)) == 1


async def test_a_reader_that_falls_behind_holds_sends_back_and_loses_nothing() -> None:
    # 8 MB to a client that does not read at first: the kernel's buffers (both held small)
    # and the transport's fill, sends wait on the Gate, then everything arrives in order
    # once the client reads. The client is websockets' sans-I/O one on a plain socket, so
    # that nothing reads ahead for it.
    loop = asyncio.get_running_loop()
    async with serving(Echo()) as (url, server):
        sock, client = await raw_client(url, receive_buffer=65536)  # no autotuning
        (proto,) = protocols(server)
        server_sock = proto.transport.get_extra_info("socket")
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        client.send_text(b"flood 2048 4096")
        await loop.sock_sendall(sock, b"".join(client.data_to_send()))
        await asyncio.sleep(0.3)
        assert not proto.writable.is_set()  # paused: the Gate is shut
        received: list[str] = []
        while len(received) < 2048:
            client.receive_data(await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5))
            events = client.events_received()
            received += [bytes(e.data[:8]).decode() for e in events if isinstance(e, Frame)]
        assert received == [f"{i:08d}" for i in range(2048)]
        assert proto.writable.is_set()
        sock.close()


async def test_keepalive_pings_are_answered() -> None:
    async with (
        serving(Echo(), ws_ping_interval=0.1, ws_ping_timeout=1.0) as (url, server),
        connect(url) as ws,
    ):
        await asyncio.sleep(0.5)
        (proto,) = protocols(server)
        assert proto.last_ping_rtt > 0
        await ws.send("still")
        assert await ws.recv() == "echo:still"


async def test_one_timer_pings_every_socket_and_a_silent_one_is_closed() -> None:
    # Three answering clients and one that completes the handshake and then never reads:
    # every answering socket is pinged again and again from the server's one Pinger (no
    # timer handle of its own), the silent one misses its pong and is closed (1011),
    # and a closed socket leaves the Pinger.
    app = Echo()
    async with (
        serving(app, ws_ping_interval=0.2, ws_ping_timeout=0.4) as (url, server),
        connect(url) as a,
        connect(url) as b,
        connect(url) as c,
    ):
        sock, _client = await raw_client(url)
        pinger = protocols(server)[0].shared.pinger
        rtts: dict[int, set[float]] = {}
        for _ in range(30):
            await asyncio.sleep(0.05)
            for proto in protocols(server):
                assert proto.ping_timer is None
                rtts.setdefault(id(proto), set()).add(proto.last_ping_rtt)
        assert len(app.disconnects) == 1  # the silent client: keepalive ping timeout
        answering = protocols(server)
        assert len(answering) == 3
        # Each answered several pings (a new round trip each time) over 1.5 s at 0.2 s.
        assert all(len(rtts[id(p)] - {0.0}) >= 3 for p in answering)
        assert set(pinger.due) <= set(answering)
        for ws in (a, b, c):
            await ws.send("still")
            assert (await ws.recv()) == "echo:still"
        sock.close()
        await a.close()
        await asyncio.sleep(0.1)
        assert len(pinger.due) <= 2


async def test_inbox_hands_items_over_in_order_and_survives_a_cancelled_get() -> None:
    inbox = Inbox()
    getter = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert not inbox.empty()
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    assert inbox.empty()
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(3)
    assert await asyncio.wait_for(waiting, 1) == 3


async def test_gate_holds_waiters_while_shut() -> None:
    gate = Gate()
    assert await gate.wait()
    gate.clear()
    waiters = [asyncio.ensure_future(gate.wait()) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    waiters[0].cancel()
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [True, True]
