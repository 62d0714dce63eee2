"""Helpers for the fault tests: Redis servers of their own, a ledger that checks every
delivery, and clients that come back.

The `Ledger` is the one assertion of docs/guarantees.md: every publish is recorded
with the seq its ack gave, every delivery with the frame that carried it, and at the
end, per client and room, the deliveries must be exactly the stored seqs from where
the client started, once each and in order, with the stored sender, id and body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pytest_redis.config import get_config
from pytest_redis.executor import RedisExecutor
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from cluster.procs import FORBIDDEN_PORTS, free_port
from tests.e2e.servers import (
    Pod,
    Stack,
    base_env,
    create_database,
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
