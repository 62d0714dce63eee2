"""The channel layer's fast path: ready frames written to every in-sync socket of a group.

A room's events reach each process once (realtime/layer.py). A socket that
follows the room through this extension is a `Subscription`, not a channel:
no queue and no task of its own. The event's frame text is encoded once per
process and written to each in-sync socket (realtime/wire.py), in seq order:
broadcasts that overtook each other are put back in order here, once per
process, rather than once per socket.

A subscription that is not in sync (still backfilling, or it saw a hole) is
not written to; it records the highest seq it has seen and its consumer
catches up from the database (realtime/catchup.py), which is what keeps every
socket gap-free and in order. After the Redis feed was lost every
subscription checks the database (`resync_all`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from django.conf import settings

from realtime.wire import Writer, text_frame

EPHEMERAL = 0  # the seq of events that are not stored messages (typing)
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
        self.held: dict[int, str] = {}
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

    def dispatch(self, group: str, seq: int, text: str) -> None:
        """Deliver one event's frame, in seq order, to the group's subscribers here."""
        feed = self.feeds.get(group)
        if feed is None or seq == EPHEMERAL:
            self._deliver(group, seq, text)
            return
        if feed.next_seq is not None and seq > feed.next_seq:
            feed.held[seq] = text
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
        self._deliver(group, seq, text)
        if feed.next_seq is None or seq >= feed.next_seq:
            feed.next_seq = seq + 1
        while feed.next_seq in feed.held:
            self._deliver(group, feed.next_seq, feed.held.pop(feed.next_seq))
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
            self._deliver(group, seq, feed.held[seq])
            feed.next_seq = seq + 1
        feed.held.clear()

    def _deliver(self, group: str, seq: int, text: str) -> None:
        subs = self.rooms.get(group)
        if not subs:
            return
        frame = text_frame(text)
        if seq == EPHEMERAL:
            # Typing and the like: not stored, no seq, skipped by sockets not in sync.
            for sub in subs:
                if sub.live:
                    sub.writer.write(frame, text)
            return
        for sub in subs:
            if seq <= sub.last_sent:
                continue  # already sent (by a backfill)
            if sub.live and seq == sub.last_sent + 1 and sub.writer.write(frame, text):
                sub.last_sent = seq
                continue
            # Not written: still backfilling, a hole before it, or the socket is too slow.
            if seq > sub.max_seen:
                sub.max_seen = seq
            if sub.live:
                sub.live = False
                sub.on_behind(sub)

    def resync_all(self) -> None:
        """After the feed was interrupted: every subscription checks the database for gaps."""
        for subs in self.rooms.values():
            for sub in list(subs):
                if sub.live:
                    sub.live = False
                    sub.on_behind(sub)
                else:
                    sub.recheck = True
