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

The chat consumer uses what the `fanout` extension adds (why: docs/architecture.md),
and this module is where a chat message reaches the sockets:
- `join(sub)`/`leave(sub)`: a socket follows a group's ordered events as a
  `Subscription` rather than a channel: no queue and no task per socket. The
  event's ready frame text (`text`, with its `seq`) is encoded once per process
  and written to every in-sync socket (its writer, realtime/wire.py), in seq
  order: broadcasts that overtook each other are put back in order once per
  process (`Fanout`), not once per socket. A subscription that is not in sync
  (backfilling, or it saw a hole) is not written to; it records the highest seq
  seen and its consumer catches up from the database (realtime/catchup.py).
- `listen(group, listener)`/`unlisten`: a callback per event instead of a
  channel, for a user's events (`session.ended`, `room.revoked`...).
- `send_group_events(items)`: group messages from any thread, in order, in one
  round trip (actions emit from their on_commit).
The specification's channels (send, receive, channel groups) are in
realtime/channel_queues.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from channels.layers import BaseChannelLayer
from channels_redis.serializers import registry
from django.conf import settings

from project import metrics, redis_config
from realtime.channel_queues import ChannelQueues
from realtime.feeds import LocalTransport, RedisTransport, Transport
from realtime.sharded_feed import ShardedTransport
from realtime.wire import Writer, text_frame

# The Redis pub/sub channel of a group's messages (channels': realtime/channel_queues.py).
GROUP_PREFIX = "chat:g:"
# Told to every listener once the feed is back after an interruption: events may be lost.
FEED_RESUMED: dict[str, Any] = {"type": "feed.resumed"}

Message = dict[str, Any]

EPHEMERAL = 0  # the seq of events that are not stored messages (typing)
# When a stored event left for the layer (right after its commit), in seconds since the
# epoch: what chat_fanout_latency_seconds measures from. Wall-clock, as it crosses processes.
SENT_AT = "sent_at"
# Publishes commit in seq order, but their broadcasts leave from different threads and
# processes and can overtake each other. A room's feed holds an early seq this long for the
# ones before it, so sockets see order restored once per process, not a hole each. Read once:
# the hot path does not look settings up per message.
REORDER_WAIT: float = settings.FANOUT_REORDER_SECONDS
REORDER_MAX_HELD: int = settings.FANOUT_REORDER_MAX


class Subscription:
    """One socket's view of one group's ordered events."""

    __slots__ = ("group", "last_sent", "live", "max_seen", "on_behind", "recheck", "writer")

    def __init__(self, group: str, writer: Writer, on_behind: Callable[[Subscription], None]):
        self.group = group
        self.writer = writer
        # Called (synchronously) when this subscription needs its consumer to catch up.
        self.on_behind = on_behind
        self.last_sent = 0
        self.max_seen = 0
        self.live = False
        # The feed was interrupted while this was catching up: ask the database once more.
        self.recheck = False


class RoomFeed:
    """Restores seq order of one group's broadcasts in this process."""

    __slots__ = ("held", "next_seq", "timer")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.held: dict[int, tuple[str, float | None]] = {}  # seq -> (text, sent_at)
        self.timer: asyncio.TimerHandle | None = None


class Fanout:
    """The process's table of group -> subscribed sockets, and their order buffers."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[Subscription, None]] = {}
        self.feeds: dict[str, RoomFeed] = {}

    def add(self, sub: Subscription) -> None:
        self.rooms.setdefault(sub.group, {})[sub] = None
        self.feeds.setdefault(sub.group, RoomFeed())

    def remove(self, sub: Subscription) -> bool:
        """Forget a subscription; True when it was the group's last here."""
        subs = self.rooms.get(sub.group)
        if subs is None or sub not in subs:
            return False
        del subs[sub]
        if subs:
            return False
        del self.rooms[sub.group]
        feed = self.feeds.pop(sub.group, None)
        if feed is not None and feed.timer is not None:
            feed.timer.cancel()
        return True

    def dispatch(self, group: str, seq: int, text: str, sent_at: float | None = None) -> None:
        """Deliver one event's frame, in seq order, to the group's subscribers here."""
        feed = self.feeds.get(group)
        if feed is None or seq == EPHEMERAL:
            self._deliver(group, seq, text, sent_at)
            return
        if feed.next_seq is not None and seq > feed.next_seq:
            feed.held[seq] = (text, sent_at)
            if len(feed.held) > REORDER_MAX_HELD:
                self._flush(group)
            elif feed.timer is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    self._flush(group)
                else:
                    feed.timer = loop.call_later(REORDER_WAIT, self._flush, group)
            return
        self._deliver(group, seq, text, sent_at)
        if feed.next_seq is None or seq >= feed.next_seq:
            feed.next_seq = seq + 1
        while feed.next_seq in feed.held:
            self._deliver(group, feed.next_seq, *feed.held.pop(feed.next_seq))
            feed.next_seq += 1
        if not feed.held and feed.timer is not None:
            feed.timer.cancel()
            feed.timer = None

    def _flush(self, group: str) -> None:
        """The missing seqs did not come in time: deliver what is held; sockets fill holes."""
        feed = self.feeds.get(group)
        if feed is None:
            return
        if feed.timer is not None:
            feed.timer.cancel()
            feed.timer = None
        for seq in sorted(feed.held):
            self._deliver(group, seq, *feed.held[seq])
            feed.next_seq = seq + 1
        feed.held.clear()

    def _deliver(self, group: str, seq: int, text: str, sent_at: float | None = None) -> None:
        subs = self.rooms.get(group)
        if not subs:
            return
        frame = text_frame(text)
        # Frames sent, counted once per event: the sockets less the few not written to, so
        # the loop's common path (written) does no counting of its own.
        missed = 0
        if seq == EPHEMERAL:
            # Typing and the like: not stored, no seq, skipped by sockets not in sync.
            for sub in subs:
                if not (sub.live and sub.writer.write(frame, text)):
                    missed += 1
            if len(subs) > missed:
                metrics.WS_FRAMES_SENT.inc(len(subs) - missed)
            return
        for sub in subs:
            if seq <= sub.last_sent:
                missed += 1
                continue  # already sent (by a backfill)
            if sub.live and seq == sub.last_sent + 1 and sub.writer.write(frame, text):
                sub.last_sent = seq
                continue
            # Not written: still backfilling, a hole before it, or the socket is too slow.
            missed += 1
            if seq > sub.max_seen:
                sub.max_seen = seq
            if sub.live:
                sub.live = False
                sub.on_behind(sub)
        if len(subs) > missed:
            metrics.WS_FRAMES_SENT.inc(len(subs) - missed)
            if sent_at is not None:
                # Once per event and process, not per socket. The writes reach the sockets'
                # transports at the end of this turn of the event loop (realtime/wire.py).
                metrics.FANOUT_LATENCY.observe(max(time.time() - sent_at, 0.0))

    def resync_all(self, groups: Collection[str] | None = None) -> None:
        """After the feed was interrupted (for these groups, or all): every subscription
        checks the database for gaps."""
        for group, subs in list(self.rooms.items()):
            if groups is not None and group not in groups:
                continue
            for sub in list(subs):
                if sub.live:
                    sub.live = False
                    sub.on_behind(sub)
                else:
                    sub.recheck = True


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
        self.channels = ChannelQueues(self)
        self.transport: Transport = (
            LocalTransport(self)
            if not url
            else ShardedTransport(self, url)
            if redis_config.cluster_of(url)
            else RedisTransport(self, url)
        )

    def serialize(self, message: Message) -> bytes:
        data: bytes = self.serializer.serialize(message)
        return data

    def deserialize(self, data: bytes) -> Message:
        message: Message = self.serializer.deserialize(data)
        return message

    # The channel layer specification.

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new channel name for a consumer in this process; others can `send` to it."""
        return await self.channels.new_channel(prefix)

    async def send(self, channel: str, message: Message) -> None:
        """Send a message to a channel: one of a process's, or a named channel."""
        if not isinstance(message, dict):
            raise TypeError("a message must be a dict")
        self.require_valid_channel_name(channel)
        await self.channels.send(channel, message)

    async def receive(self, channel: str) -> Message:
        """The next message on the channel (messages older than `expiry` are dropped)."""
        self.require_valid_channel_name(channel)
        return await self.channels.receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self.channels.add(group, channel)
        await self.transport.subscribe(GROUP_PREFIX + group)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self.channels.discard(group, channel)

    async def group_send(self, group: str, message: Message) -> None:
        self.require_valid_group_name(group)
        await self.publish_message(GROUP_PREFIX + group, stamped(message, time.time()))

    async def flush(self) -> None:
        """Forget every channel, group and subscription, and close connections (they reopen
        on the next use)."""
        self.channels = ChannelQueues(self)
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
            self.unsubscribe_if_unused(sub.group)

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
            self.unsubscribe_if_unused(group)

    def send_group_events(
        self, items: Sequence[tuple[str, Message]], *, durable: bool = True
    ) -> None:
        """Send group messages from any thread, in order, in one round trip. Not durable
        (typing notices): one Redis does not take is dropped, not sent again."""
        now = time.time()
        self.transport.publish(
            *(
                (GROUP_PREFIX + group, self.serialize(stamped(message, now)))
                for group, message in items
            ),
            durable=durable,
        )

    # What the transport calls.

    def wanted(self) -> list[str]:
        groups = {*self.fanout.rooms, *self.listeners, *self.channels.groups}
        return [GROUP_PREFIX + group for group in groups] + self.channels.wanted()

    def deliver(self, channel: str, data: bytes) -> None:
        """One message from the transport, for this process's members."""
        if not channel.startswith(GROUP_PREFIX):
            self.channels.deliver(channel, data)
            return
        group = channel[len(GROUP_PREFIX) :]
        message = self.deserialize(data)
        text = message.get("text")
        if isinstance(text, str) and group in self.fanout.rooms:
            seq = int(message.get("seq") or EPHEMERAL)
            self.fanout.dispatch(group, seq, text, message.get(SENT_AT))
        listeners = self.listeners.get(group)
        if listeners:
            for listener in list(listeners):
                listener.on_group_event(message)
        self.channels.deliver_group(group, message)

    def feed_lost(self, channels: Collection[str] | None = None) -> None:
        groups = None
        if channels is not None:
            groups = {c.removeprefix(GROUP_PREFIX) for c in channels if c.startswith(GROUP_PREFIX)}
        self.fanout.resync_all(groups)
        told: set[int] = set()
        for group, listeners in list(self.listeners.items()):
            if groups is not None and group not in groups:
                continue
            for listener in list(listeners):
                if id(listener) not in told:
                    told.add(id(listener))
                    listener.on_group_event(FEED_RESUMED)

    # What the channels call.

    async def publish_message(self, channel: str, message: Message) -> None:
        await self.transport.apublish((channel, self.serialize(message)))

    def unsubscribe_if_unused(self, group: str) -> None:
        in_use = group in self.fanout.rooms or group in self.listeners
        if not in_use and group not in self.channels.groups:
            self.transport.unsubscribe(GROUP_PREFIX + group)


def stamped(message: Message, now: float) -> Message:
    """A stored event (one with a seq) with the time it left: the fan-out's latency starts
    there. A copy: the caller's dict is left as it was."""
    if not message.get("seq"):
        return message
    return {**message, SENT_AT: now}
