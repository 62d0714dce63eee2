"""Read-replica routing: which reads may go to `replica`, and the fallback when it fails.

The rule (docs/data.md, "The read replica"):
- Every write, and every read not marked, goes to the primary (`default`). The websocket's
  catch-up and `since` resumes, authentication, room checks and everything inside a
  transaction are such reads: what the resume guarantee depends on never touches the replica.
- A read marked with `replica_reads()` goes to the replica while it answers: history pages and
  room lists (web/access.py). The caller checks that what the replica answered covers what
  the client needs, and reads the primary when it does not (`fallback("behind")`).
- A replica error opens the breaker: for DATABASE_REPLICA_RETRY_SECONDS every marked read
  goes to the primary, then the replica is tried again. Each is counted in
  chat_db_replica_fallbacks_total{reason}.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connections

from project import metrics

REPLICA = "replica"
PRIMARY = "default"

logger = logging.getLogger(__name__)

_marked: contextvars.ContextVar[bool] = contextvars.ContextVar("replica_reads", default=False)


class Breaker:
    """The process's memory of a failed replica: skip it until `open_until`."""

    def __init__(self) -> None:
        self.open_until = 0.0

    def is_open(self) -> bool:
        return time.monotonic() < self.open_until

    def trip(self) -> None:
        retry = getattr(settings, "DATABASE_REPLICA_RETRY_SECONDS", 5.0)
        self.open_until = time.monotonic() + retry

    def reset(self) -> None:
        self.open_until = 0.0


breaker = Breaker()


def configured() -> bool:
    return REPLICA in settings.DATABASES


def usable() -> bool:
    """Whether a marked read goes to the replica now (counts a skip while the breaker is open)."""
    if not configured():
        return False
    if connections[PRIMARY].in_atomic_block:
        return False  # a transaction reads its own writes: the primary
    if breaker.is_open():
        metrics.DB_REPLICA_FALLBACKS.labels("open").inc()
        return False
    return True


@contextmanager
def replica_reads() -> Iterator[None]:
    """Reads inside go to the replica (if usable); writes still go to the primary."""
    token = _marked.set(True)
    try:
        yield
    finally:
        _marked.reset(token)


@contextmanager
def primary_reads() -> Iterator[None]:
    """Reads inside go to the primary, even inside `replica_reads()`."""
    token = _marked.set(False)
    try:
        yield
    finally:
        _marked.reset(token)


def failed(error: BaseException) -> None:
    """The replica failed a read: open the breaker, count it, hand its connection back."""
    metrics.DB_REPLICA_FALLBACKS.labels("error").inc()
    breaker.trip()
    logger.warning("read replica failed, reading the primary: %s", type(error).__name__)
    try:
        connections[REPLICA].close()
    except Exception:  # a broken connection may fail to close too; it is dropped anyway
        logger.debug("closing the replica's connection failed", exc_info=True)


def fallback(reason: str) -> None:
    """A replica answer was not enough (e.g. `behind`): the caller reads the primary."""
    metrics.DB_REPLICA_FALLBACKS.labels(reason).inc()


class ReplicaRouter:
    """DATABASE_ROUTERS: marked reads to the replica, everything else to the primary."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return REPLICA if _marked.get() and configured() else PRIMARY

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return PRIMARY

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # one database, two copies

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == PRIMARY  # the replica gets the schema by streaming
