"""The project's Channels channel layer: groups and channels over Redis pub/sub, or in process.

`CHANNEL_LAYERS["default"]` names it (project/settings.py): with `url` (REDIS_URL)
processes share events through Redis; without, it stays inside one process. It
implements the channel layer specification (`send`, `receive`, `new_channel`,
`group_add`, `group_discard`, `group_send`, `flush`), so the standard idiom works
from anywhere: `await get_channel_layer().group_send("room.7", {...})` from a
view, a task or a shell, and an ordinary Channels consumer with `group_add` and a
handler per event type works across processes.

Delivery is what Redis pub/sub gives, as with channels-redis'
RedisPubSubChannelLayer: each process subscribes once per group that has
members here and gets each group message once, decodes it once and hands it to
its members; nothing is stored in Redis, so a message to a process that is
away is not kept for it (there is no group expiry: a process's members leave
with their sockets). Durability is the database's job: the chat's consumers
catch up from PostgreSQL (realtime/catchup.py). A group or channel message
Redis does not take is published again until it does (realtime/feeds.py).

The chat consumer uses what the `fanout` extension adds (why: docs/architecture.md):
- `join(sub)`/`leave(sub)`: a socket follows a group's ordered events as a
  `Subscription` (realtime/fanout.py) rather than a channel: no queue or task
  per socket; an event's ready frame text (`text`, with its `seq`) is encoded
  once per process and written to every in-sync socket, in seq order.
- `listen(group, listener)`/`unlisten`: a callback per event instead of a
  channel, for a user's events (`session.ended`, `room.revoked`...).
- `send_group_events(items)`: group messages from any thread, in order, in one
  round trip (actions emit from their on_commit).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from channels_redis.serializers import registry

from realtime.fanout import EPHEMERAL, Fanout, Subscription
from realtime.feeds import LocalTransport, RedisTransport, Transport

logger = logging.getLogger(__name__)

# Redis pub/sub channel names: a group's messages, one process's channels, a named channel's.
GROUP_PREFIX = "chat:g:"
PROCESS_PREFIX = "chat:p:"
NAMED_PREFIX = "chat:c:"
# To a process's channel, the message travels with the channel it is for.
TARGET = "__channel__"
# Told to every listener once the feed is back after an interruption: events may be lost.
FEED_RESUMED: dict[str, Any] = {"type": "feed.resumed"}

Message = dict[str, Any]


class GroupListener(Protocol):
    def on_group_event(self, event: Message) -> None:
        """One event of a group it listens to; must not block."""


class ChatChannelLayer(BaseChannelLayer):  # type: ignore[misc]  # channels is untyped
    extensions = ["groups", "flush", "fanout"]

    def __init__(
        self,
        url: str | None = None,
        expiry: float = 60,
        capacity: int = 100,
        channel_capacity: dict[str, int] | None = None,
        serializer_format: str = "msgpack",
        symmetric_encryption_keys: list[str] | None = None,
    ):
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        # channels-redis' serializers: msgpack, optionally encrypted with Fernet keys.
        self.serializer = registry.get_serializer(
            serializer_format, symmetric_encryption_keys=symmetric_encryption_keys, expiry=expiry
        )
        self.process = uuid.uuid4().hex[:16]
        self.fanout = Fanout()
        self.listeners: dict[str, dict[GroupListener, None]] = {}
        self.groups: dict[str, set[str]] = {}  # group -> this process's member channels
        self.memberships: dict[str, set[str]] = {}  # channel -> its groups
        self.queues: dict[str, asyncio.Queue[tuple[float, Message]]] = {}
        self.named: set[str] = set()  # channels without "!" received on here
        self.transport: Transport = RedisTransport(self, url) if url else LocalTransport(self)

    def serialize(self, message: Message) -> bytes:
        data: bytes = self.serializer.serialize(message)
        return data

    def deserialize(self, data: bytes) -> Message:
        message: Message = self.serializer.deserialize(data)
        return message

    # The channel layer specification.

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new channel name for a consumer in this process; others can `send` to it."""
        name = f"{prefix}.{self.process}!{uuid.uuid4().hex}"
        self.queues[name] = asyncio.Queue(self.get_capacity(name))
        await self.transport.subscribe(PROCESS_PREFIX + self.process)
        return name

    async def send(self, channel: str, message: Message) -> None:
        """Send a message to a channel: one of a process's, or a named channel."""
        if not isinstance(message, dict):
            raise TypeError("a message must be a dict")
        self.require_valid_channel_name(channel)
        if "!" not in channel:
            await self._publish(NAMED_PREFIX + channel, message)
            return
        owner = channel.split("!", 1)[0].rsplit(".", 1)[-1]
        if owner == self.process:
            self._put(channel, message, full=ChannelFull)
            return
        await self._publish(PROCESS_PREFIX + owner, {**message, TARGET: channel})

    async def receive(self, channel: str) -> Message:
        """The next message on the channel (messages older than `expiry` are dropped)."""
        self.require_valid_channel_name(channel)
        if "!" not in channel and channel not in self.named:
            self.named.add(channel)
            self.queues.setdefault(channel, asyncio.Queue(self.get_capacity(channel)))
            await self.transport.subscribe(NAMED_PREFIX + channel)
        queue = self.queues.get(channel)
        if queue is None:
            if not channel.split("!", 1)[0].endswith("." + self.process):
                raise RuntimeError(f"{channel!r} is not a channel of this process")
            # Receiving again after a cancelled receive (which forgot it).
            queue = self.queues[channel] = asyncio.Queue(self.get_capacity(channel))
        try:
            while True:
                stamp, message = await queue.get()
                if time.monotonic() - stamp < self.expiry:
                    return message
        except (asyncio.CancelledError, TimeoutError):
            # Channels cancels a consumer's receive when the consumer exits: its channel
            # is done with (there is no delete_channel in the specification).
            self._forget_channel(channel)
            raise

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        if channel not in self.queues:
            raise RuntimeError(
                "group_add() takes a channel of this process, as a consumer's "
                "self.channel_layer.group_add(group, self.channel_name) does"
            )
        self.groups.setdefault(group, set()).add(channel)
        self.memberships.setdefault(channel, set()).add(group)
        await self.transport.subscribe(GROUP_PREFIX + group)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._discard(group, channel)

    async def group_send(self, group: str, message: Message) -> None:
        self.require_valid_group_name(group)
        await self._publish(GROUP_PREFIX + group, message)

    async def flush(self) -> None:
        """Forget every channel, group and subscription, and close connections (they reopen
        on the next use)."""
        self.queues.clear()
        self.groups.clear()
        self.memberships.clear()
        self.named.clear()
        self.listeners.clear()
        self.fanout = Fanout()
        await self.transport.close()

    async def close(self) -> None:
        await self.flush()

    # The fanout extension.

    async def join(self, sub: Subscription) -> None:
        """Follow a group's ordered events; returns once those sent from now on reach `sub`."""
        self.fanout.add(sub)
        await self.transport.subscribe(GROUP_PREFIX + sub.group)

    def leave(self, sub: Subscription) -> None:
        if self.fanout.remove(sub):
            self._unsubscribe_if_unused(sub.group)

    async def listen(self, group: str, listener: GroupListener) -> None:
        self.listeners.setdefault(group, {})[listener] = None
        await self.transport.subscribe(GROUP_PREFIX + group)

    def unlisten(self, group: str, listener: GroupListener) -> None:
        listeners = self.listeners.get(group)
        if listeners is None or listener not in listeners:
            return
        del listeners[listener]
        if not listeners:
            del self.listeners[group]
            self._unsubscribe_if_unused(group)

    def send_group_events(
        self, items: Sequence[tuple[str, Message]], *, durable: bool = True
    ) -> None:
        """Send group messages from any thread, in order, in one round trip. Not durable
        (typing notices): one Redis does not take is dropped, not sent again."""
        self.transport.publish(
            *((GROUP_PREFIX + group, self.serialize(message)) for group, message in items),
            durable=durable,
        )

    # What the transport calls.

    def wanted(self) -> list[str]:
        groups = {*self.fanout.rooms, *self.listeners, *self.groups}
        wanted = [GROUP_PREFIX + group for group in groups]
        if any("!" in channel for channel in self.queues):
            wanted.append(PROCESS_PREFIX + self.process)
        wanted += [NAMED_PREFIX + channel for channel in self.named]
        return wanted

    def deliver(self, channel: str, data: bytes) -> None:
        """One message from the transport, for this process's members."""
        if channel.startswith(GROUP_PREFIX):
            self._deliver_group(channel[len(GROUP_PREFIX) :], self.deserialize(data))
        elif channel.startswith(PROCESS_PREFIX):
            message = self.deserialize(data)
            target = message.pop(TARGET, None)
            if isinstance(target, str):
                self._put(target, message)
        elif channel.startswith(NAMED_PREFIX):
            self._put(channel[len(NAMED_PREFIX) :], self.deserialize(data))

    def feed_lost(self) -> None:
        self.fanout.resync_all()
        told: set[int] = set()
        for listeners in list(self.listeners.values()):
            for listener in list(listeners):
                if id(listener) not in told:
                    told.add(id(listener))
                    listener.on_group_event(FEED_RESUMED)

    # Helpers.

    def _deliver_group(self, group: str, message: Message) -> None:
        text = message.get("text")
        if isinstance(text, str) and group in self.fanout.rooms:
            self.fanout.dispatch(group, int(message.get("seq") or EPHEMERAL), text)
        listeners = self.listeners.get(group)
        if listeners:
            for listener in list(listeners):
                listener.on_group_event(message)
        members = self.groups.get(group)
        if members:
            for channel in list(members):
                self._put(channel, dict(message))

    async def _publish(self, channel: str, message: Message) -> None:
        await self.transport.apublish((channel, self.serialize(message)))

    def _put(self, channel: str, message: Message, full: type[Exception] | None = None) -> None:
        queue = self.queues.get(channel)
        if queue is None:
            return  # nobody receives it here (any more)
        if queue.full():
            if full is not None:
                raise full(channel)
            logger.warning("channel %s is full; a message for it was dropped", channel)
            return
        queue.put_nowait((time.monotonic(), message))

    def _discard(self, group: str, channel: str) -> None:
        members = self.groups.get(group)
        if members is None or channel not in members:
            return
        members.discard(channel)
        groups = self.memberships.get(channel)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self.memberships[channel]
        if not members:
            del self.groups[group]
            self._unsubscribe_if_unused(group)

    def _forget_channel(self, channel: str) -> None:
        self.queues.pop(channel, None)
        for group in list(self.memberships.get(channel, ())):
            self._discard(group, channel)
        if channel in self.named:
            self.named.discard(channel)
            self.transport.unsubscribe(NAMED_PREFIX + channel)

    def _unsubscribe_if_unused(self, group: str) -> None:
        in_use = group in self.fanout.rooms or group in self.listeners or group in self.groups
        if not in_use:
            self.transport.unsubscribe(GROUP_PREFIX + group)
