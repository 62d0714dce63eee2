"""Rows held by another transaction, as another worker or process would hold them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.db import connection, transaction


@contextmanager
def locked_elsewhere(lock: Callable[[], int]) -> Iterator[threading.Event]:
    """Run `lock` (a SELECT ... FOR UPDATE; it returns how many rows it locked, at least one)
    in a transaction on a thread and connection of its own, and hold it until the block ends
    or the yielded event is set."""
    locked, release = threading.Event(), threading.Event()
    counted: list[int] = []

    def hold() -> None:
        try:
            with transaction.atomic():
                counted.append(lock())
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=hold, name="lock holder")
    thread.start()
    try:
        assert locked.wait(30), "the rows were not locked in time"
        assert counted[0] >= 1, "nothing to lock"
        yield release
    finally:
        release.set()
        thread.join(30)
