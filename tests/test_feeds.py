"""The retry of broadcasts Redis did not take (realtime/rebroadcast.py; end to end in tests/e2e)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from django.test import override_settings
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime.rebroadcast import Rebroadcast

Items = Sequence[tuple[str, bytes]]


class FlakySend:
    """A send that fails while `down` is set (as redis-py does when Redis is away), and
    refuses the channels in `dead` (a Cluster's shard that is down) while others go."""

    def __init__(self) -> None:
        self.down = True
        self.dead: set[str] = set()
        self.sent: list[tuple[str, bytes]] = []
        self.tries = 0
        self.done = threading.Event()

    def __call__(self, items: Items) -> list[bool]:
        self.tries += 1
        if self.down:
            raise RedisConnectionError("Connection refused")
        taken = [channel not in self.dead for channel, _ in items]
        self.sent.extend(item for item, ok in zip(items, taken, strict=True) if ok)
        self.done.set()
        return taken


@override_settings(REBROADCAST_SECONDS=0.01)
def test_what_waits_goes_out_in_order_once_redis_answers() -> None:
    send = FlakySend()
    retry = Rebroadcast(send)
    retry.add([("room:1", b"1"), ("room:1", b"2")])
    retry.add([("room:1", b"3")])
    while send.tries < 3:
        threading.Event().wait(0.01)
    assert retry.waiting() == 3
    send.down = False
    assert send.done.wait(5)
    assert send.sent == [("room:1", b"1"), ("room:1", b"2"), ("room:1", b"3")]
    deadline = threading.Event()
    while retry.waiting():
        deadline.wait(0.01)
    assert retry._thread is None  # it stops once nothing waits


@override_settings(REBROADCAST_SECONDS=0.01, REBROADCAST_MAX=2)
def test_past_the_cap_the_oldest_are_left_to_the_database() -> None:
    send = FlakySend()
    retry = Rebroadcast(send)
    retry.add([("room:1", b"1"), ("room:1", b"2"), ("room:1", b"3")])
    assert retry.waiting() == 2
    send.down = False
    assert send.done.wait(5)
    assert send.sent == [("room:1", b"2"), ("room:1", b"3")]


@override_settings(REBROADCAST_SECONDS=0.01)
def test_a_channel_that_is_down_holds_back_its_own_broadcasts_only() -> None:
    """On a Cluster one shard down keeps its channels' broadcasts waiting, in order; the
    others' go out, and new ones of theirs are not held behind them."""
    send = FlakySend()
    send.down = False
    send.dead = {"room:1"}
    retry = Rebroadcast(send)
    retry.add([("room:1", b"1"), ("room:2", b"a")])
    while ("room:2", b"a") not in send.sent or retry.waiting() != 1:
        threading.Event().wait(0.01)
    assert retry.hold([("room:2", b"b"), ("room:1", b"2")]) == [("room:2", b"b")]
    assert retry.waiting() == 2  # room:1's two, in order
    send.dead.clear()
    while retry.waiting():
        threading.Event().wait(0.01)
    assert [item for item in send.sent if item[0] == "room:1"] == [
        ("room:1", b"1"),
        ("room:1", b"2"),
    ]
