"""Broadcasts Redis did not take, sent again in order (realtime/feeds.py's transports)."""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence

from django.conf import settings

from project.redis_config import ERRORS as REDIS_ERRORS

logger = logging.getLogger(__name__)


class Rebroadcast:
    """Broadcasts Redis did not take, sent again in order from a thread of their own.

    A thread, not a task: publishes come from any thread (the publisher's pool, a
    view's, a management command's), including processes with no event loop. It
    runs only while something waits, every REBROADCAST_SECONDS, and stops once
    Redis has taken everything. A repeat of what Redis did take (a PUBLISH that
    timed out on our side) is harmless: sockets drop seqs they already have.
    """

    def __init__(self, send: Callable[[Sequence[tuple[str, bytes]]], list[bool]]):
        self._send = send  # says which of the items Redis took
        self._items: deque[tuple[str, bytes]] = deque()
        self._held: Counter[str] = Counter()  # channel -> its items waiting
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def waiting(self) -> int:
        return len(self._items)

    def hold(self, items: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """Queue the items of channels that have some waiting already (behind them, in
        order); return the others, to be sent now."""
        with self._lock:
            free = [item for item in items if not self._held[item[0]]]
            held = [item for item in items if self._held[item[0]]]
        if held:
            self.add(held)
        return free

    def add(self, items: Sequence[tuple[str, bytes]]) -> None:
        with self._lock:
            self._items.extend(items)
            self._held.update(channel for channel, _ in items)
            overflow = len(self._items) - settings.REBROADCAST_MAX
            for _ in range(max(overflow, 0)):
                # Subscribers still get these from the database: at the room's next message,
                # or when they reconnect.
                self._forget(self._items.popleft())
            if overflow > 0:
                logger.error("dropped %d broadcasts waiting for Redis", overflow)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rebroadcast", daemon=True)
                self._thread.start()
            else:
                self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(settings.REBROADCAST_SECONDS)
            self._wake.clear()
            with self._lock:
                items = list(self._items)
            taken = [False] * len(items)
            if items:
                try:
                    taken = self._send(items)
                except REDIS_ERRORS:
                    continue
                if any(taken):
                    logger.info("%d broadcasts went out once Redis answered", sum(taken))
            with self._lock:
                # Those Redis did not take stay, in order, ahead of any added meanwhile.
                for _ in items:
                    self._items.popleft()
                kept = [item for item, ok in zip(items, taken, strict=True) if not ok]
                for item in items:
                    self._forget(item)
                self._items.extendleft(reversed(kept))
                self._held.update(channel for channel, _ in kept)
                if not self._items:
                    self._thread = None
                    return

    def _forget(self, item: tuple[str, bytes]) -> None:
        self._held[item[0]] -= 1
        if self._held[item[0]] <= 0:
            del self._held[item[0]]
