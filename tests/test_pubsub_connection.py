"""The feed's own pub/sub connection (realtime/pubsub_connection.py) against a real Redis:
logging in, delivering, and the health check that gives up on a server that went silent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Collection, Iterator
from typing import Any

import pytest
import redis
from django.test import override_settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from cluster.procs import free_port
from realtime.feeds import RedisTransport
from realtime.pubsub_connection import PubSubConnection
from realtime.redis_clients import Address, feed_address

PASSWORD = "s3cret-for-this-test"  # a throwaway server's


class Server:
    """A throwaway redis-server on a free loopback port, with a password."""

    def __init__(self) -> None:
        self.port = free_port()
        executable = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                *(executable, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--requirepass", PASSWORD),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD)

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP: the socket stays open, the kernel still ACKs, nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def server() -> Iterator[Server]:
    started = Server()
    yield started
    started.stop()


class Replies:
    """A handler keeping the pushes; `until(n)` waits for the n-th."""

    def __init__(self) -> None:
        self.kept: list[list[Any]] = []
        self.grew = asyncio.Event()

    def __call__(self, reply: list[Any]) -> None:
        self.kept.append(reply)
        self.grew.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.kept) < count:
                self.grew.clear()
                await self.grew.wait()


async def test_it_logs_in_and_hands_over_every_push(server: Server) -> None:
    replies = Replies()
    address = await feed_address(server.url)
    assert address.password == PASSWORD
    connection = await PubSubConnection.open(address, replies)
    connection.send("SUBSCRIBE", "room:1", "room:2")
    await replies.until(2)
    sender = server.client()
    for n in range(50):
        await asyncio.to_thread(sender.publish, f"room:{n % 2 + 1}", f"m{n}".encode())
    await replies.until(52)
    connection.close()
    kept = replies.kept
    assert kept[:2] == [[b"subscribe", b"room:1", 1], [b"subscribe", b"room:2", 2]]
    assert kept[2:] == [
        [b"message", f"room:{n % 2 + 1}".encode(), f"m{n}".encode()] for n in range(50)
    ]


async def test_a_wrong_password_fails_the_open(server: Server) -> None:
    address = Address("127.0.0.1", server.port, password="wrong")
    with pytest.raises(RedisConnectionError, match=r"WRONGPASS|invalid"):
        await PubSubConnection.open(address, lambda reply: None)


async def test_an_error_reply_loses_the_connection(server: Server) -> None:
    address = await feed_address(server.url)
    connection = await PubSubConnection.open(address, lambda reply: None)
    connection.send("SUBSCRIBE", "room:1")
    connection.send("GET", "not-allowed-while-subscribed")
    with pytest.raises(ResponseError, match=r"only .*SUBSCRIBE"):
        await asyncio.wait_for(connection.wait_lost(), 5)


@override_settings(REDIS_HEALTH_CHECK_SECONDS=0.2, REDIS_FEED_TIMEOUT_SECONDS=1.5)
async def test_a_quiet_server_is_pinged_and_a_silent_one_given_up(server: Server) -> None:
    connection = await PubSubConnection.open(await feed_address(server.url), lambda r: None)
    connection.send("SUBSCRIBE", "room:1")
    # Quiet for longer than the timeout: the PINGs' answers keep it.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connection.wait_lost(), 3)
    started = time.monotonic()
    with server.frozen(), pytest.raises(RedisConnectionError, match="did not answer"):
        await asyncio.wait_for(connection.wait_lost(), 10)
    # 1.5 s of silence, counted from the last reply: up to a tick earlier than the freeze.
    assert 0.5 < time.monotonic() - started < 3


class Sink:
    def __init__(self) -> None:
        self.delivered: list[tuple[str, bytes]] = []
        self.lost = 0

    def wanted(self) -> list[str]:
        return ["room:1"]

    def deliver(self, channel: str, data: bytes) -> None:
        self.delivered.append((channel, data))

    def feed_lost(self, channels: Collection[str] | None = None) -> None:
        self.lost += 1


@override_settings(REDIS_HEALTH_CHECK_SECONDS=0.2, REDIS_FEED_TIMEOUT_SECONDS=1.0)
async def test_the_feed_reconnects_after_a_silence_and_says_so(server: Server) -> None:
    sink = Sink()
    transport = RedisTransport(sink, server.url)
    try:
        await transport.subscribe("room:1")
        with server.frozen():
            await asyncio.sleep(2.0)  # past the timeout: the connection is given up
        deadline = time.monotonic() + 10
        while sink.lost == 0:
            assert time.monotonic() < deadline, "the feed never reconnected"
            await asyncio.sleep(0.05)
        await transport.subscribe("room:1")  # confirmed on the new connection
        await asyncio.to_thread(server.client().publish, "room:1", b"after")
        while not sink.delivered:
            assert time.monotonic() < deadline, "nothing delivered after the reconnect"
            await asyncio.sleep(0.05)
        assert sink.delivered == [("room:1", b"after")]
    finally:
        await transport.close()
