"""The per-process fan-out: who gets written to, and the Redis feed end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from realtime import feeds
from realtime import layer as fanout
from realtime.layer import FEED_RESUMED, ChatChannelLayer, Fanout, Subscription
from realtime.wire import text_frame

ROOM = "room.7"


class RecordingWriter:
    """Stands in for a socket in these pure unit tests; `room` is how much it can take."""

    def __init__(self, room: int = 1000):
        self.frames: list[bytes] = []
        self.room = room
        self.written = asyncio.Event()

    def write(self, frame: bytes, text: str) -> bool:
        if len(self.frames) >= self.room:
            return False
        self.frames.append(frame)
        self.written.set()
        return True

    def flush(self) -> None:
        pass

    def close_now(self, code: int, reason: str) -> bool:
        self.frames.append(b"<closed>")
        return True


def make_sub(
    writer: RecordingWriter, behind: list[Subscription], last_sent: int = 0
) -> Subscription:
    sub = Subscription(ROOM, writer, behind.append)
    sub.last_sent = last_sent
    sub.live = True
    return sub


@pytest.fixture
def table() -> Fanout:
    table = Fanout()
    table.rooms[ROOM] = {}
    return table


def test_in_sync_sockets_get_the_same_encoded_frame(table: Fanout) -> None:
    behind: list[Subscription] = []
    writers = [RecordingWriter(), RecordingWriter()]
    for writer in writers:
        table.rooms[ROOM][make_sub(writer, behind)] = None
    table.dispatch(ROOM, 1, '{"seq":1}')
    assert [w.frames for w in writers] == [[text_frame('{"seq":1}')]] * 2
    assert text_frame("hi") == b"\x81\x02hi"
    assert behind == []


def test_a_hole_stops_writing_and_asks_for_a_catch_up(table: Fanout) -> None:
    behind: list[Subscription] = []
    writer = RecordingWriter()
    sub = make_sub(writer, behind, last_sent=4)
    table.rooms[ROOM][sub] = None
    table.dispatch(ROOM, 6, "six")
    assert (writer.frames, behind, sub.live, sub.max_seen) == ([], [sub], False, 6)
    table.dispatch(ROOM, 7, "seven")  # still behind: recorded, not written, not asked again
    assert (writer.frames, behind, sub.max_seen) == ([], [sub], 7)


def test_seqs_already_sent_are_dropped(table: Fanout) -> None:
    behind: list[Subscription] = []
    writer = RecordingWriter()
    table.rooms[ROOM][make_sub(writer, behind, last_sent=5)] = None
    table.dispatch(ROOM, 5, "five")
    table.dispatch(ROOM, 3, "three")
    assert (writer.frames, behind) == ([], [])


def test_a_slow_socket_falls_back_to_catching_up(table: Fanout) -> None:
    behind: list[Subscription] = []
    slow, fast = RecordingWriter(room=1), RecordingWriter()
    slow_sub, fast_sub = make_sub(slow, behind), make_sub(fast, behind)
    table.rooms[ROOM] = {slow_sub: None, fast_sub: None}
    for seq in (1, 2, 3):
        table.dispatch(ROOM, seq, str(seq))
    assert len(fast.frames) == 3
    assert len(slow.frames) == 1
    assert behind == [slow_sub]
    assert (slow_sub.last_sent, slow_sub.max_seen) == (1, 3)


@pytest.fixture
async def redis_layer(redis_proc: Any) -> AsyncIterator[ChatChannelLayer]:
    layer = ChatChannelLayer(url=f"redis://{redis_proc.host}:{redis_proc.port}/0")
    yield layer
    await layer.close()


async def test_messages_cross_redis_once_per_process(redis_layer: ChatChannelLayer) -> None:
    assert isinstance(redis_layer.transport, feeds.RedisTransport)
    behind: list[Subscription] = []
    writer = RecordingWriter()
    sub = make_sub(writer, behind)
    sub.group = "room.42"
    await redis_layer.join(sub)
    # Sent from a thread, as an action's on_commit does.
    event = {"type": "chat.message", "seq": 1, "text": '{"seq":1}'}
    await asyncio.to_thread(redis_layer.send_group_events, [("room.42", event)])
    await asyncio.wait_for(writer.written.wait(), timeout=5)
    assert writer.frames == [text_frame('{"seq":1}')]
    redis_layer.leave(sub)
    assert "room.42" not in redis_layer.fanout.rooms


async def test_overtaken_broadcasts_are_put_back_in_order_once_per_process(table: Fanout) -> None:
    behind: list[Subscription] = []
    writer = RecordingWriter()
    table.rooms[ROOM][make_sub(writer, behind)] = None
    table.feeds[ROOM] = fanout.RoomFeed()
    table.dispatch(ROOM, 1, "one")
    table.dispatch(ROOM, 3, "three")  # overtook 2: held, not a hole
    assert writer.frames == [text_frame("one")]
    table.dispatch(ROOM, 2, "two")
    assert writer.frames == [text_frame(t) for t in ("one", "two", "three")]
    assert behind == []


async def test_a_seq_that_never_comes_is_left_to_the_sockets_to_fill(table: Fanout) -> None:
    behind: list[Subscription] = []
    writer = RecordingWriter()
    sub = make_sub(writer, behind)
    table.rooms[ROOM][sub] = None
    table.feeds[ROOM] = fanout.RoomFeed()
    table.dispatch(ROOM, 1, "one")
    table.dispatch(ROOM, 3, "three")  # 2 was lost
    await asyncio.sleep(fanout.REORDER_WAIT * 3)
    assert writer.frames == [text_frame("one")]
    assert (behind, sub.max_seen) == ([sub], 3)  # its consumer fills 2 and 3 from the database


async def test_a_lost_feed_tells_every_listener_and_subscription() -> None:
    layer = ChatChannelLayer()
    heard: list[dict[str, Any]] = []

    class Listener:
        def on_group_event(self, event: dict[str, Any]) -> None:
            heard.append(event)

    await layer.listen("user.7", Listener())
    await layer.listen("user.8", Listener())
    behind: list[Subscription] = []
    sub = make_sub(RecordingWriter(), behind)
    await layer.join(sub)
    layer.feed_lost()
    assert heard == [FEED_RESUMED, FEED_RESUMED]
    assert behind == [sub]
