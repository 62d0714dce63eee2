"""The channel layer (realtime/layer.py) against the specification, the way channels-redis
tests its own layers (tests/test_core.py, tests/test_pubsub.py), over a real Redis.

Two layer instances stand for two processes: each has its own process id and its
own pub/sub connection, as two uvicorn pods do.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator

from realtime.channel_queues import NAMED_PREFIX
from realtime.layer import ChatChannelLayer

NOTHING_WITHIN = 0.5  # how long "nothing arrives" is waited for


@pytest.fixture
def redis_url(redis_proc: Any) -> str:
    return f"redis://{redis_proc.host}:{redis_proc.port}/0"


@pytest.fixture(params=["in process", "redis"])
async def layer(request: pytest.FixtureRequest, redis_proc: Any) -> AsyncIterator[ChatChannelLayer]:
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0" if request.param == "redis" else None
    made = ChatChannelLayer(url=url, capacity=3)
    yield made
    await made.flush()


@pytest.fixture(params=["redis", "redis cluster"])
async def two_processes(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[tuple[ChatChannelLayer, ChatChannelLayer]]:
    """Two processes over one Redis, or over a Redis Cluster (sharded pub/sub)."""
    url = redis_url
    if request.param == "redis cluster":
        url = request.getfixturevalue("redis_cluster_url")
    a, b = ChatChannelLayer(url=url), ChatChannelLayer(url=url)
    yield a, b
    await a.flush()
    await b.flush()


async def assert_nothing(layer: ChatChannelLayer, channel: str) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), NOTHING_WITHIN)


async def test_a_message_sent_to_a_new_channel_is_received(layer: ChatChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.message", "text": "Ahoy-hoy!"})
    assert await layer.receive(channel) == {"type": "test.message", "text": "Ahoy-hoy!"}


async def test_messages_are_received_in_the_order_sent(layer: ChatChannelLayer) -> None:
    channel = await layer.new_channel()
    for n in (1, 2, 3):
        await layer.send(channel, {"type": f"message.{n}"})
    assert [(await layer.receive(channel))["type"] for _ in range(3)] == [
        "message.1",
        "message.2",
        "message.3",
    ]


async def test_a_full_channel_refuses_a_send(layer: ChatChannelLayer) -> None:
    channel = await layer.new_channel()
    for _ in range(3):
        await layer.send(channel, {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "test.message"})


async def test_bad_names_and_messages_are_refused(layer: ChatChannelLayer) -> None:
    with pytest.raises(TypeError):
        await layer.send("bad channel!", {"type": "x"})  # space
    with pytest.raises(TypeError):
        await layer.group_send("bad group!", {"type": "x"})
    with pytest.raises(TypeError):
        await layer.send("fine", ["not", "a", "dict"])  # type: ignore[arg-type]


async def test_groups_reach_their_members_and_not_the_discarded(layer: ChatChannelLayer) -> None:
    one, two, three = [await layer.new_channel(prefix=f"test-gr-chan-{n}") for n in (1, 2, 3)]
    for channel in (one, two, three):
        await layer.group_add("test-group", channel)
    await layer.group_discard("test-group", two)
    await layer.group_send("test-group", {"type": "message.1"})
    assert (await asyncio.wait_for(layer.receive(one), 1))["type"] == "message.1"
    assert (await asyncio.wait_for(layer.receive(three), 1))["type"] == "message.1"
    await assert_nothing(layer, two)


async def test_a_group_send_skips_a_full_member_and_not_the_others(layer: ChatChannelLayer) -> None:
    full, free = await layer.new_channel(), await layer.new_channel()
    for channel in (full, free):
        await layer.group_add("test-group", channel)
    for n in (1, 2, 3):
        await layer.send(full, {"type": f"filler.{n}"})
    await layer.group_send("test-group", {"type": "message.1"})
    assert (await asyncio.wait_for(layer.receive(free), 1))["type"] == "message.1"
    assert [(await layer.receive(full))["type"] for _ in range(3)] == [
        "filler.1",
        "filler.2",
        "filler.3",
    ]
    await assert_nothing(layer, full)


async def test_discarding_before_adding_is_harmless(layer: ChatChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.group_discard("test-group", channel)


async def test_group_add_takes_only_this_processs_channels(layer: ChatChannelLayer) -> None:
    with pytest.raises(RuntimeError):
        await layer.group_add("test-group", "specific.elsewhere!abc")


async def test_channel_names_do_not_repeat_after_a_random_seed_reset(
    layer: ChatChannelLayer,
) -> None:
    random.seed(1)
    first = await layer.new_channel()
    random.seed(1)
    assert await layer.new_channel() != first


async def test_a_receive_can_be_cancelled_and_the_channel_used_again(
    layer: ChatChannelLayer,
) -> None:
    channel = await layer.new_channel()
    for delay in (0, 0.001, 0.005):
        await layer.send(channel, {"type": "test.message"})
        task = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(delay)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await layer.send(channel, {"type": "after"})
    assert (await asyncio.wait_for(layer.receive(channel), 1))["type"] in ("test.message", "after")


async def test_messages_older_than_the_expiry_are_dropped(redis_url: str) -> None:
    layer = ChatChannelLayer(url=redis_url, expiry=0.3)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.message", "text": "First!"})
    await asyncio.sleep(0.5)  # the expiry is a duration: nothing to await but time
    await layer.send(channel, {"type": "test.message", "text": "Second!"})
    assert (await layer.receive(channel))["text"] == "Second!"
    await assert_nothing(layer, channel)
    await layer.flush()


async def test_flush_forgets_channels_and_groups(layer: ChatChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.group_add("test-group", channel)
    await layer.flush()
    assert not layer.channels.groups
    assert not layer.channels.queues
    again = await layer.new_channel()  # usable afterwards, as new
    await layer.send(again, {"type": "x"})
    assert (await layer.receive(again))["type"] == "x"


# Across processes (Redis only).


async def test_a_group_reaches_members_in_every_process(
    two_processes: tuple[ChatChannelLayer, ChatChannelLayer],
) -> None:
    a, b = two_processes
    on_a, on_b = await a.new_channel(), await b.new_channel()
    await a.group_add("room.1", on_a)
    await b.group_add("room.1", on_b)
    await a.group_send("room.1", {"type": "chat.message", "text": "hi"})
    for layer, channel in ((a, on_a), (b, on_b)):
        assert await asyncio.wait_for(layer.receive(channel), 2) == {
            "type": "chat.message",
            "text": "hi",
        }


async def test_a_send_reaches_a_channel_of_another_process(
    two_processes: tuple[ChatChannelLayer, ChatChannelLayer],
) -> None:
    a, b = two_processes
    on_b = await b.new_channel()
    await a.send(on_b, {"type": "test.message", "n": 1})
    assert await asyncio.wait_for(b.receive(on_b), 2) == {"type": "test.message", "n": 1}


async def test_a_named_channel_is_received_from_another_process(
    two_processes: tuple[ChatChannelLayer, ChatChannelLayer],
) -> None:
    a, b = two_processes
    receiving = asyncio.ensure_future(b.receive("test-channel"))
    # Pub/sub keeps nothing for later: send once Redis has confirmed b's subscription (this
    # returns when it has: the receive's own subscribe waits on the same confirmation).
    await asyncio.wait_for(b.transport.subscribe(NAMED_PREFIX + "test-channel"), 5)
    await a.send("test-channel", {"type": "message.1"})
    assert (await asyncio.wait_for(receiving, 2))["type"] == "message.1"


def test_group_send_works_from_sync_code_through_async_to_sync(redis_url: str) -> None:
    """As a view, a management command or a Celery task sends."""
    receiver = ChatChannelLayer(url=redis_url)
    sender = ChatChannelLayer(url=redis_url)

    async def scenario() -> dict[str, Any]:
        channel = await receiver.new_channel()
        await receiver.group_add("test-group", channel)
        await asyncio.to_thread(
            async_to_sync(sender.group_send), "test-group", {"type": "from.sync"}
        )
        message = await asyncio.wait_for(receiver.receive(channel), 2)
        await receiver.flush()
        await sender.flush()
        return message

    assert async_to_sync(scenario)()["type"] == "from.sync"


class TutorialConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    """An ordinary Channels consumer, as the Channels tutorial writes one."""

    async def connect(self) -> None:
        await self.channel_layer.group_add("room.tutorial", self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard("room.tutorial", self.channel_name)

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"message": event["text"]})


@pytest.mark.django_db  # Channels' consumers close stale database connections per message
async def test_an_ordinary_consumer_gets_a_group_send_from_another_process(
    two_processes: tuple[ChatChannelLayer, ChatChannelLayer],
) -> None:
    mine, other = two_processes
    saved = channel_layers.backends.get("default")
    channel_layers.set("default", mine)
    try:
        socket = WebsocketCommunicator(TutorialConsumer.as_asgi(), "/ws/tutorial/")
        connected, _ = await socket.connect(timeout=3)
        assert connected
        await other.group_send("room.tutorial", {"type": "chat.message", "text": "hello"})
        assert await socket.receive_json_from(timeout=3) == {"message": "hello"}
        await socket.disconnect()
        assert "room.tutorial" not in mine.channels.groups
    finally:
        if saved is not None:
            channel_layers.set("default", saved)
        else:
            channel_layers.backends.pop("default", None)
