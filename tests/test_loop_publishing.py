"""Publishes from any thread go out on the event loop's own Redis connection
(realtime/publish_connection.py, realtime/feeds.py), against a real Redis: the thread does
not wait for Redis, and what Redis did not answer before the connection went is sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from realtime.feeds import RedisTransport
from realtime.publish_connection import NAME
from tests.test_pubsub_connection import Server, Sink


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    yield server
    server.process.kill()
    server.process.wait()


def publisher_client(server: Server) -> dict[str, Any]:
    """The publish connection's line of CLIENT LIST."""
    clients = [c for c in server.client().client_list() if c["name"] == NAME]
    assert len(clients) == 1, clients
    return clients[0]


def listener(server: Server) -> Any:
    """A plain subscriber, beside the transport's own feed: what Redis published."""
    pubsub = server.client().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe("room:1")
    return pubsub


async def heard(pubsub: Any, count: int, within: float) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        message = await asyncio.to_thread(pubsub.get_message, timeout=0.2)
        if message is not None:
            got.append(message["data"])
    return got


async def test_a_thread_s_publishes_go_out_on_the_loop_s_connection(server: Server) -> None:
    sink = Sink()
    transport = RedisTransport(sink, server.url)
    try:
        await transport.subscribe("room:1")
        for n in range(3):  # as a store thread does, from its on_commit
            await asyncio.to_thread(transport.publish, ("room:1", f"m{n}".encode()))
        deadline = time.monotonic() + 10
        while len(sink.delivered) < 3:
            assert time.monotonic() < deadline, sink.delivered
            await asyncio.sleep(0.02)
        assert sink.delivered == [("room:1", f"m{n}".encode()) for n in range(3)]
        assert publisher_client(server)["cmd"] == "publish"
        assert transport._publisher is None  # the threads' pooled client was never made
        assert transport.loop_publisher is not None
        assert not transport.loop_publisher.pending  # every PUBLISH answered
    finally:
        await transport.close()


@override_settings(REBROADCAST_SECONDS=0.2)
async def test_publishes_redis_did_not_answer_are_sent_again(server: Server) -> None:
    transport = RedisTransport(Sink(), server.url)
    pubsub = listener(server)
    admin = server.client()
    try:
        await transport.subscribe("room:1")
        assert await heard(pubsub, 1, 0.3) == []  # subscribed, nothing yet
        admin.client_pause(10_000, all=False)  # PUBLISH waits; CLIENT and SUBSCRIBE do not
        await asyncio.to_thread(transport.publish, ("room:1", b"stored"))
        await asyncio.to_thread(transport.publish, ("room:1", b"typing"), durable=False)
        assert transport.loop_publisher is not None
        deadline = time.monotonic() + 5
        while publisher_client(server)["cmd"] != "publish":  # Redis holds it, unanswered
            assert time.monotonic() < deadline, publisher_client(server)
            await asyncio.sleep(0.02)
        assert len(transport.loop_publisher.pending) == 2
        # The connection goes before Redis ran them: neither was published.
        admin.client_kill_filter(_id=publisher_client(server)["id"])
        admin.client_unpause()
        # The stored message is sent again (once Redis answers); the typing notice is not.
        assert await heard(pubsub, 2, 5) == [b"stored"]
    finally:
        admin.client_unpause()
        pubsub.close()
        await transport.close()


async def test_a_lost_publish_connection_comes_back_with_the_feed(server: Server) -> None:
    sink = Sink()
    transport = RedisTransport(sink, server.url)
    try:
        await transport.subscribe("room:1")
        first = publisher_client(server)["id"]
        server.client().client_kill_filter(_id=first)  # nothing in flight on it
        deadline = time.monotonic() + 10
        while sink.lost == 0:  # the feed reconnected: sockets check the database
            assert time.monotonic() < deadline, "the feed never reconnected"
            await asyncio.sleep(0.05)
        await transport.subscribe("room:1")
        assert publisher_client(server)["id"] != first
        await asyncio.to_thread(transport.publish, ("room:1", b"after"))
        while not sink.delivered:
            assert time.monotonic() < deadline, "nothing delivered after the reconnect"
            await asyncio.sleep(0.02)
        assert sink.delivered == [("room:1", b"after")]
        assert publisher_client(server)["cmd"] == "publish"  # on the new connection
        assert transport._publisher is None
    finally:
        await transport.close()
