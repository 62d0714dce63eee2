"""The Redis feed's retry of broadcasts Redis did not take (end to end in tests/e2e)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from django.test import override_settings
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime.feeds import Rebroadcast

Items = Sequence[tuple[str, bytes]]


class FlakySend:
    """A send that fails while `down` is set (as redis-py does when Redis is away)."""

    def __init__(self) -> None:
        self.down = True
        self.sent: list[tuple[str, bytes]] = []
        self.tries = 0
        self.done = threading.Event()

    def __call__(self, items: Items) -> None:
        self.tries += 1
        if self.down:
            raise RedisConnectionError("Connection refused")
        self.sent.extend(items)
        self.done.set()


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
