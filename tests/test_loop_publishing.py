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
        assert transport.loop_publisher.connection is not None
        assert not transport.loop_publisher.connection.pending  # every PUBLISH answered
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
        connection = transport.loop_publisher.connection
        assert connection is not None
        deadline = time.monotonic() + 5
        while publisher_client(server)["cmd"] != "publish":  # Redis holds it, unanswered
            assert time.monotonic() < deadline, publisher_client(server)
            await asyncio.sleep(0.02)
        assert len(connection.pending) == 2
        # The connection goes before Redis ran them: neither was published.
        admin.client_kill_filter(_id=publisher_client(server)["id"])
        admin.client_unpause()
        # The stored message is sent again (once Redis answers); the typing notice is not.
        assert await heard(pubsub, 2, 5) == [b"stored"]
    finally:
        admin.client_unpause()
        pubsub.close()
        await transport.close()


async def test_a_publish_connection_closed_while_idle_is_made_again(server: Server) -> None:
    # A Redis `timeout` (or a proxy) closes idle clients; the feed's, a subscriber, is exempt.
    sink = Sink()
    transport = RedisTransport(sink, server.url)
    try:
        await transport.subscribe("room:1")
        first = publisher_client(server)["id"]
        server.client().client_kill_filter(_id=first)  # nothing in flight on it
        deadline = time.monotonic() + 10
        while transport.loop_publisher.connection.usable:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the loss went unnoticed"
            await asyncio.sleep(0.02)
        # The first publish after goes through the pooled client and has a new one made.
        await asyncio.to_thread(transport.publish, ("room:1", b"m1"))
        assert transport._publisher is not None
        while not publisher_client_of(server):
            assert time.monotonic() < deadline, "no new publish connection"
            await asyncio.sleep(0.02)
        assert publisher_client(server)["id"] != first
        await asyncio.to_thread(transport.publish, ("room:1", b"m2"))
        while len(sink.delivered) < 2:
            assert time.monotonic() < deadline, sink.delivered
            await asyncio.sleep(0.02)
        assert sink.delivered == [("room:1", b"m1"), ("room:1", b"m2")]
        assert publisher_client(server)["cmd"] == "publish"  # m2, on the new connection
        assert sink.lost == 0  # the feed stayed: no socket had to check the database
    finally:
        await transport.close()


def publisher_client_of(server: Server) -> list[dict[str, Any]]:
    return [c for c in server.client().client_list() if c["name"] == NAME]


@override_settings(REBROADCAST_SECONDS=0.05)
async def test_a_publish_on_the_event_loop_never_blocks_it_when_the_connection_is_lost(
    server: Server,
) -> None:
    # The store on the event loop (realtime/publisher.py) publishes from the loop itself: with
    # the publish connection lost, the Rebroadcast thread sends it, not a blocking client.
    sink = Sink()
    transport = RedisTransport(sink, server.url)
    try:
        await transport.subscribe("room:1")
        assert transport.publishes_on_loop()
        server.client().client_kill_filter(_id=publisher_client(server)["id"])
        deadline = time.monotonic() + 10
        while transport.loop_publisher.connection.usable:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the loss went unnoticed"
            await asyncio.sleep(0.02)
        transport.publish(("room:1", b"typing"), durable=False)  # dropped, as Redis was away
        transport.publish(("room:1", b"m1"))
        assert transport._publisher is None  # the pooled client was not used on the loop
        while not sink.delivered:
            assert time.monotonic() < deadline, "the publish was never sent"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert sink.delivered == [("room:1", b"m1")]
    finally:
        await transport.close()
