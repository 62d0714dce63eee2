"""Helpers for the fault tests: Redis servers of their own, a ledger that checks every
delivery, clients that come back, a websocket client whose reads the test controls, and
gauges of a pod's process.

The `Ledger` is the one assertion of docs/guarantees.md: every publish is recorded
with the seq its ack gave, every delivery with the frame that carried it, and at the
end, per client and room, the deliveries must be exactly the stored seqs from where
the client started, once each and in order, with the stored sender, id and body.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import struct
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pytest_redis.config import get_config
from pytest_redis.executor import RedisExecutor
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.e2e.servers import (
    FORBIDDEN_PORTS,
    Pod,
    Stack,
    base_env,
    create_database,
    free_port,
    issue_tokens,
    manage,
)
from tests.e2e.wsclient import WAIT, Frame, ServerError, WsClient, check_gap_free, publish_frame

# Stacks of their own, for tests that break a server the other tests share.


def build_stack(pg: Any, redis_url: str, log_dir: Path, database: str = "faults") -> Stack:
    """A migrated database on the PostgreSQL server `pg` (an executor), with users' tokens."""
    assert int(pg.port) not in FORBIDDEN_PORTS, "refusing the machine's own PostgreSQL"
    create_database(pg.host, int(pg.port), pg.user, pg.password, database)
    env = base_env(
        {
            "DATABASE_URL": f"postgres://{pg.user}@{pg.host}:{pg.port}/{database}",
            "DATABASE_PASSWORD": pg.password or "",
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "SECRET_KEY": "e2e-faults-not-a-secret-" + "x" * 40,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
        }
    )
    manage(env, "migrate", "--noinput")
    tokens = issue_tokens(env, ["alice", "bob", "charlie"])
    return Stack(env=env, tokens=tokens, passwords={}, log_dir=log_dir)


# Reconnecting after a refused connection: nothing announces the pod (or Redis) is back.
RETRY_PAUSE = 0.1
RECONNECT_WITHIN = 30.0


@contextlib.contextmanager
def redis_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    idle_timeout: int = 0,
) -> Iterator[RedisExecutor]:
    """A throwaway Redis server on a free port, stopped at the end.

    `idle_timeout` is Redis' `timeout`: it closes a client idle that long. 0 (Redis'
    own default) never does; pytest-redis' session server closes them after 15 s.
    """
    config = get_config(request)
    port = free_port()
    assert port not in FORBIDDEN_PORTS, "refusing the machine's own Redis"
    executor = RedisExecutor(
        executable=config.exec,
        databases=config.db_count,
        redis_timeout=idle_timeout,
        loglevel=config.loglevel,
        host="127.0.0.1",
        port=port,
        startup_timeout=30,
        # A short path: the unix socket's must stay under 107 characters.
        datadir=tmp_path_factory.mktemp("redis"),
    )
    executor.start()
    try:
        yield executor
    finally:
        executor.stop()


def redis_url(server: RedisExecutor) -> str:
    return f"redis://{server.host}:{server.port}/0"


async def assert_cap_refuses(pod: Pod, token: str, *, within: float = 3.0) -> None:
    """A new socket on the pod gets `rate_limited`, then close 1008, within the time."""
    client = await WsClient.connect(pod.ws_url, token=token, name=f"over the cap@{pod.name}")
    try:
        error = await client.wait_for(lambda f: f["type"] == "error", within=within)
        assert error["code"] == "rate_limited", error
        assert await client.wait_closed(within=within) == 1008
    finally:
        await client.close()


async def publish_burst(clients: list[WsClient], room: str, count: int) -> list[Frame]:
    """Publish `count` messages round-robin over the clients without waiting; the answers."""
    sent = []
    for n in range(count):
        client = clients[n % len(clients)]
        frame = {"ref": client.new_ref(), **publish_frame(room, f"burst {n}")}
        await client.send(frame)
        sent.append((client, frame["ref"]))
    return [await client.reply(ref) for client, ref in sent]


async def connect_under_cap(pod: Pod, token: str, *, within: float = 3.0) -> WsClient:
    """A connection the cap lets in, allowing for hang-ups the server has not processed yet."""
    refusal: list[Frame] = []
    try:
        async with asyncio.timeout(within):
            while True:
                client = await WsClient.connect(pod.ws_url, token=token)
                # Closed before the pong: refused.
                with contextlib.suppress(AssertionError, ConnectionClosed):
                    await client.ping()
                    return client
                refusal = client.frames
                # Nothing announces that the server has processed the earlier hang-ups.
                await asyncio.sleep(RETRY_PAUSE)
    except TimeoutError:
        raise AssertionError(f"the user is locked out of {pod.name}: {refusal}") from None


class Ledger:
    """Every acked publish and every delivery, checked against the stored history at the end."""

    def __init__(self) -> None:
        self.acks: dict[tuple[str, str], int] = {}  # (room, client_msg_id) -> acked seq
        # (client, room) -> [(client_msg_id, seq)] in the order the client published them
        self.published: defaultdict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
        self.deliveries: defaultdict[tuple[str, str], list[Frame]] = defaultdict(list)
        self.starts: dict[tuple[str, str], int] = {}  # (client, room) -> first seq it asked for
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def acked(self, client: str, room: str, client_msg_id: str, seq: int) -> None:
        known = self.acks.setdefault((room, client_msg_id), seq)
        assert known == seq, f"{client_msg_id} was acked as seq {known} and as seq {seq}"
        self.published[(client, room)].append((client_msg_id, seq))
        for count, waiter in self._waiters:
            if len(self.acks) >= count and not waiter.done():
                waiter.set_result(None)

    async def wait_for_acks(self, count: int, *, within: float = 60.0) -> None:
        """Until at least `count` distinct publishes have been acked."""
        if len(self.acks) >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((count, waiter))
        try:
            await asyncio.wait_for(waiter, within)
        finally:
            self._waiters.remove((count, waiter))

    def delivered(self, client: str, room: str, frames: Iterable[Frame], *, first: int) -> None:
        """The frames one client received (all its connections, in order), wanting seqs >= first."""
        self.starts[(client, room)] = first
        self.deliveries[(client, room)].extend(
            f for f in frames if f.get("type") == "message" and f.get("room") == room
        )

    def check(self, room: str, stored: Sequence[Frame], *, all_acked: bool = True) -> None:
        """History is 1..N once each; every ack is in it; every client got its part in order."""
        seqs = [m["seq"] for m in stored]
        check_gap_free(seqs, 1, len(seqs))
        ids = Counter((m["sender"], m["client_msg_id"]) for m in stored)
        stored_twice = [key for key, n in ids.items() if n > 1]
        assert not stored_twice, f"stored more than once: {stored_twice[:10]}"
        by_seq = {m["seq"]: m for m in stored}
        acked = {cmid: seq for (r, cmid), seq in self.acks.items() if r == room}
        for cmid, seq in acked.items():
            assert seq in by_seq, f"{cmid} was acked as seq {seq}, which is not stored"
            assert by_seq[seq]["client_msg_id"] == cmid, f"seq {seq} is not {cmid}: {by_seq[seq]}"
        if all_acked:
            unacked = [m["client_msg_id"] for m in stored if m["client_msg_id"] not in acked]
            assert not unacked, f"stored but never acked: {unacked[:10]}"
        for (client, r), sent in self.published.items():
            if r == room:
                order = [seq for _, seq in sent]
                assert order == sorted(order), f"{client}'s publishes were stored out of order"
        for (client, r), frames in self.deliveries.items():
            if r != room:
                continue
            try:
                check_gap_free([f["seq"] for f in frames], self.starts[(client, r)], len(stored))
            except AssertionError as error:
                raise AssertionError(f"{client}: {error}") from None
            for frame in frames:
                want = by_seq[frame["seq"]]
                got = (frame["sender"], frame["client_msg_id"], frame["body"])
                assert got == (want["sender"], want["client_msg_id"], want["body"]), (frame, want)


async def answer_or_none(conn: WsClient, ref: str, *, within: float = WAIT) -> Frame | None:
    """The answer to the command sent with `ref`, or None if the connection closed first."""
    try:
        return await conn.reply(ref, within=within)
    except AssertionError:
        if conn.closed.is_set():
            return None
        raise


class ReturningClient:
    """A client that comes back, as docs/protocol.md tells clients to.

    It subscribes to one room; when its connection drops it reconnects to the
    next pod that answers and subscribes again with `since` = the last seq it
    saw, and it publishes again, with the same client_msg_id, whatever was not
    acked. `conns` holds every connection it had, so its deliveries are theirs
    in order.
    """

    def __init__(
        self, name: str, token: str, pods: Sequence[Pod], room: str, *, since: int = 0
    ) -> None:
        self.name = name
        self.token = token
        self.pods = list(pods)
        self.room = room
        self.since = since
        self.conns: list[WsClient] = []
        self.close_codes: list[int | None] = []
        self.resent = 0  # publishes sent again after a lost connection
        self._turn = 0
        self._lock = asyncio.Lock()

    @property
    def frames(self) -> list[Frame]:
        return [frame for conn in self.conns for frame in conn.frames]

    def last_seen(self) -> int:
        for conn in reversed(self.conns):
            seqs = conn.seqs(self.room)
            if seqs:
                return seqs[-1]
        return self.since

    async def connection(self, *, within: float = RECONNECT_WITHIN) -> WsClient:
        """The open, subscribed connection; reconnects and resubscribes if it was lost."""
        async with self._lock:
            if self.conns and not self.conns[-1].closed.is_set():
                return self.conns[-1]
            if self.conns:
                self.close_codes.append(self.conns[-1].close_code)
            async with asyncio.timeout(within):
                while True:
                    conn = await self._subscribed_connection()
                    if conn is not None:
                        return conn
                    self._turn += 1
                    await asyncio.sleep(RETRY_PAUSE)

    async def _subscribed_connection(self) -> WsClient | None:
        pod = self.pods[self._turn % len(self.pods)]
        try:
            conn = await WsClient.connect(
                pod.ws_url, token=self.token, name=f"{self.name}@{pod.name}", within=5.0
            )
        except (OSError, InvalidHandshake, TimeoutError):
            return None  # the pod is gone, or cannot take connections yet
        self.conns.append(conn)
        ref = conn.new_ref()
        subscribe = {"type": "subscribe", "ref": ref, "room": self.room, "since": self.last_seen()}
        with contextlib.suppress(ConnectionClosed):
            await conn.send(subscribe)
        try:
            answer = await answer_or_none(conn, ref)
        except TimeoutError:
            raise AssertionError(
                f"{conn.name}: accepted, but subscribe unanswered for {WAIT:.0f}s while the "
                "socket stays open: a silent socket"
            ) from None
        if answer is not None and answer["type"] == "subscribed":
            return conn
        await conn.close()  # refused while a server it needs is down: try again
        return None

    async def publish_all(
        self, items: Sequence[tuple[str, str]], *, window: int = 4, on_ack: Ledger
    ) -> None:
        """Publish (client_msg_id, body) pairs in order, `window` in flight at a time."""
        todo = list(items)
        while todo:
            conn = await self.connection()
            batch = todo[:window]
            refs = []
            try:
                for client_msg_id, body in batch:
                    frame = {"ref": conn.new_ref(), **publish_frame(self.room, body, client_msg_id)}
                    await conn.send(frame)
                    refs.append(frame["ref"])
            except ConnectionClosed:
                # send() on a lost connection raises without yielding to the loop, so until
                # the reader task has run, `closed` is unset, connection() hands back this
                # one and this loop would spin for ever, starving every other task: wait.
                await asyncio.wait_for(conn.closed.wait(), WAIT)
            for n, ref in enumerate(refs):
                answer = await answer_or_none(conn, ref)
                if answer is None:
                    self.resent += len(refs) - n  # sent, maybe stored, not acked: again
                    break
                if answer["type"] != "ack":
                    raise ServerError(answer)
                client_msg_id, _ = todo.pop(0)
                on_ack.acked(self.name, self.room, client_msg_id, answer["seq"])

    async def wait_for_seq(self, seq: int, *, within: float = 30.0) -> None:
        """Until this client has seen `seq`, reconnecting as often as it must."""
        async with asyncio.timeout(within):
            while self.last_seen() < seq:
                conn = await self.connection()
                with contextlib.suppress(AssertionError):  # closed first: reconnect
                    await conn.wait_for_seq(self.room, seq, within=within)

    async def close(self) -> None:
        if self.conns:
            await self.conns[-1].close()


# A websocket client over a bare socket: the test decides when bytes are read.

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


# Gauges of a pod's process, read from /proc.


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def holds_connection(pid: int, server_port: int, client_port: int) -> bool:
    """Whether the process still has the server end of this loopback TCP connection open."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            inodes.add(fields[9])
    if not inodes - {"0"}:
        return False  # gone, or orphaned by the process (inode 0) while the kernel flushes it
    fd_dir = Path(f"/proc/{pid}/fd")
    links = set()
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            links.add(os.readlink(fd_dir / fd))
    return any(f"socket:[{inode}]" in links for inode in inodes)


def pid_of(pod: Pod) -> int:
    assert pod.proc is not None, f"{pod.name} was never started"
    return pod.proc.pid


async def poll_until(check: Callable[[], bool], *, within: float, every: float = 0.1) -> float:
    """Poll a gauge that no event reports (/proc, DBSIZE) until `check` holds; the wait."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 -- /proc and Redis gauges signal no event
            await asyncio.sleep(every)
    return loop.time() - started


def tcp_sockets(pid: int, *, local_port: int | None = None, remote_port: int | None = None) -> int:
    """How many of the process's open files are TCP sockets with this local or remote port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if fields[9] != "0" and local_port in (None, local) and remote_port in (None, remote):
                inodes.add(f"socket:[{fields[9]}]")
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            count += os.readlink(fd_dir / fd) in inodes
    return count


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the processes: their sockets stay open, the kernel still ACKs, nothing answers."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


C = TypeVar("C", bound=ReturningClient)


@contextlib.asynccontextmanager
async def client_factory(
    cls: type[C], *, tolerant: bool = False
) -> AsyncIterator[Callable[..., C]]:
    """Make clients of `cls` for a test; their connections are closed at its end (errors
    closing them ignored if `tolerant`: servers the test killed)."""
    made: list[C] = []

    def make(*args: Any, **kwargs: Any) -> C:
        made.append(cls(*args, **kwargs))
        return made[-1]

    try:
        yield make
    finally:
        await asyncio.gather(*(client.close() for client in made), return_exceptions=tolerant)
