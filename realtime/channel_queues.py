"""The channel layer specification's channels: a queue each, in the process that receives.

Ordinary Channels consumers (and `send`/`receive` from anywhere) use these;
the chat consumer does not (it follows groups through the layer's `fanout`
extension, realtime/layer.py). A channel made by `new_channel` lives in this
process: a `send` from another process travels on the process's Redis
channel with its target named. A named channel (no "!") is received on by
whichever process listens to it. Messages older than the layer's `expiry`
are dropped on receive.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from channels.exceptions import ChannelFull

if TYPE_CHECKING:
    from realtime.layer import ChatChannelLayer

logger = logging.getLogger(__name__)

# Redis pub/sub channel names: one process's channels, a named channel's.
PROCESS_PREFIX = "chat:p:"
NAMED_PREFIX = "chat:c:"
# To a process's channel, the message travels with the channel it is for.
TARGET = "__channel__"

Message = dict[str, Any]


class ChannelQueues:
    """This process's channels, and which of them are in which group."""

    def __init__(self, layer: ChatChannelLayer):
        self.layer = layer
        self.groups: dict[str, set[str]] = {}  # group -> this process's member channels
        self.memberships: dict[str, set[str]] = {}  # channel -> its groups
        self.queues: dict[str, asyncio.Queue[tuple[float, Message]]] = {}
        self.named: set[str] = set()  # channels without "!" received on here

    async def new_channel(self, prefix: str) -> str:
        layer = self.layer
        name = f"{prefix}.{layer.process}!{uuid.uuid4().hex}"
        self.queues[name] = asyncio.Queue(layer.get_capacity(name))
        await layer.transport.subscribe(PROCESS_PREFIX + layer.process)
        return name

    async def send(self, channel: str, message: Message) -> None:
        layer = self.layer
        if "!" not in channel:
            await layer.publish_message(NAMED_PREFIX + channel, message)
            return
        owner = channel.split("!", 1)[0].rsplit(".", 1)[-1]
        if owner == layer.process:
            self.put(channel, message, full=ChannelFull)
            return
        await layer.publish_message(PROCESS_PREFIX + owner, {**message, TARGET: channel})

    async def receive(self, channel: str) -> Message:
        layer = self.layer
        if "!" not in channel and channel not in self.named:
            self.named.add(channel)
            self.queues.setdefault(channel, asyncio.Queue(layer.get_capacity(channel)))
            await layer.transport.subscribe(NAMED_PREFIX + channel)
        queue = self.queues.get(channel)
        if queue is None:
            if not channel.split("!", 1)[0].endswith("." + layer.process):
                raise RuntimeError(f"{channel!r} is not a channel of this process")
            # Receiving again after a cancelled receive (which forgot it).
            queue = self.queues[channel] = asyncio.Queue(layer.get_capacity(channel))
        try:
            while True:
                stamp, message = await queue.get()
                if time.monotonic() - stamp < layer.expiry:
                    return message
        except (asyncio.CancelledError, TimeoutError):
            # Channels cancels a consumer's receive when the consumer exits: its channel
            # is done with (there is no delete_channel in the specification).
            self.forget(channel)
            raise

    def add(self, group: str, channel: str) -> None:
        if channel not in self.queues:
            raise RuntimeError(
                "group_add() takes a channel of this process, as a consumer's "
                "self.channel_layer.group_add(group, self.channel_name) does"
            )
        self.groups.setdefault(group, set()).add(channel)
        self.memberships.setdefault(channel, set()).add(group)

    def discard(self, group: str, channel: str) -> None:
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
            self.layer.unsubscribe_if_unused(group)

    def deliver_group(self, group: str, message: Message) -> None:
        """A group message, a copy to each member channel here."""
        members = self.groups.get(group)
        if members:
            for channel in list(members):
                self.put(channel, dict(message))

    def deliver(self, channel: str, data: bytes) -> bool:
        """A message on a process's or a named channel; False if `channel` is neither."""
        if channel.startswith(PROCESS_PREFIX):
            message = self.layer.deserialize(data)
            target = message.pop(TARGET, None)
            if isinstance(target, str):
                self.put(target, message)
        elif channel.startswith(NAMED_PREFIX):
            self.put(channel[len(NAMED_PREFIX) :], self.layer.deserialize(data))
        else:
            return False
        return True

    def wanted(self) -> list[str]:
        """The Redis channels these channels need subscribed."""
        wanted = [NAMED_PREFIX + channel for channel in self.named]
        if any("!" in channel for channel in self.queues):
            wanted.append(PROCESS_PREFIX + self.layer.process)
        return wanted

    def put(self, channel: str, message: Message, full: type[Exception] | None = None) -> None:
        queue = self.queues.get(channel)
        if queue is None:
            return  # nobody receives it here (any more)
        if queue.full():
            if full is not None:
                raise full(channel)
            logger.warning("channel %s is full; a message for it was dropped", channel)
            return
        queue.put_nowait((time.monotonic(), message))

    def forget(self, channel: str) -> None:
        self.queues.pop(channel, None)
        for group in list(self.memberships.get(channel, ())):
            self.discard(group, channel)
        if channel in self.named:
            self.named.discard(channel)
            self.layer.transport.unsubscribe(NAMED_PREFIX + channel)
