"""The cache for hot reads (CACHES "default", from CACHE_URL): versioned keys, faults, metrics.

What is cached (web/access.py reads through it) and the versions each entry depends on:

    rooms:<user>           the user's room list        epoch, rooms, user:<user>, reads:<user>;
                           each room's last_seq also   room:<room>
    room:<slug>            a room's id, title, ...     epoch, rooms
    member:<user>:<slug>   whether the user is in it   epoch, rooms, user:<user>

A version is a random token under `v:<name>`. An entry carries the tokens it was computed
at, and a read fetches it together with the current tokens (one round trip): it is used
only if they are equal. Invalidating is setting new tokens, O(1) however many entries or
members depend on them.

The rule: whatever changes a cached answer calls one of the `changed_*` functions below in
the same code that changes it (an action in web/actions/), inside its transaction. They bump
after commit (and at once too inside a transaction, so the rest of it reads its own writes):

    a message stored                    changed_last_seq(room ids)      room:<room>
    memberships made or removed         changed_memberships(user ids)   user:<user>
    (create, add, remove, join by posting, a read marker's first row, a user deactivated)
    a read marker moved                 changed_read_markers(user id)   reads:<user>
    a room created                      created_room(slug, private)     room:<slug> deleted;
                                                                        rooms, if public
    rooms made in bulk                  changed_rooms()                 rooms

A reader takes the tokens before it reads the database, so an entry tagged with a token was
read after whatever commit set that token; a later commit sets another. The one window is
between a commit and its bump (the same thread, next statement).

Faults: the cache down, slow or answering garbage never fails a read. A cache error is
counted in chat_cache_errors_total{op}, and for CACHE_RETRY_SECONDS this process reads the
database only. An entry that does not decode is a miss (and is removed). An invalidation
that did not reach the cache is not lost: this process bumps `v:epoch`, which every entry
carries, as soon as the cache answers again (retried every CACHE_RETRY_SECONDS), and reads
nothing from the cache until it has; until then another process may serve that stale entry,
for CACHE_TTL_SECONDS at most.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.signals import setting_changed
from django.db import connection, transaction

from project import metrics
from web import cache_bumps
from web.cache_entries import UNAVAILABLE, WRITE_UNAVAILABLE, Entry, get_many

logger = logging.getLogger(__name__)

EPOCH = "v:epoch"
ROOMS = "v:rooms"

T = TypeVar("T")


def user_version(user_id: Any) -> str:
    return f"v:user:{user_id}"


def reads_version(user_id: Any) -> str:
    return f"v:reads:{user_id}"


def room_version(room_id: int) -> str:
    return f"v:room:{room_id}"


# --- Invalidation: called by actions ------------------------------------------------------


def changed_last_seq(room_ids: Iterable[int]) -> None:
    _invalidate([room_version(pk) for pk in set(room_ids)])


async def achanged_last_seq(room_ids: Iterable[int]) -> None:
    """changed_last_seq after a statement committed on the event loop, outside Django's
    transactions (web/models/async_database.py): at once, without blocking the loop. Redis is
    written from the loop (web/cache_bumps.py), memcached from a thread."""
    keys = [room_version(pk) for pk in set(room_ids)]
    backend = _backend()
    if isinstance(backend, (type(None), LocMemCache)) or _state.pending or _down():
        return _bumper(keys)()  # in memory, or nothing written: the epoch is bumped later
    writer = cache_bumps.writer(backend)
    if writer is None:
        return await asyncio.to_thread(_bumper(keys))
    try:
        await writer.set_tokens({k: new_token() for k in keys}, _version_ttl(backend))
    except WRITE_UNAVAILABLE:
        lost_write("invalidate")


def changed_memberships(user_ids: Iterable[Any]) -> None:
    _invalidate([user_version(pk) for pk in set(user_ids)])


def changed_read_markers(user_id: Any) -> None:
    _invalidate([reads_version(user_id)])


def created_room(slug: str, private: bool) -> None:
    # No answer is cached for a slug that does not exist; room:<slug> can only be left over
    # from a room deleted outside the actions (a shell): drop it.
    _invalidate([ROOMS] if not private else [], delete=[f"room:{slug}"])


def changed_rooms() -> None:
    _invalidate([ROOMS])


def invalidate_all() -> None:
    """Every entry stale at once (after restoring the cache from a backup, or a raw SQL fix)."""
    _invalidate([EPOCH])


def _invalidate(keys: list[str], delete: Iterable[str] = ()) -> None:
    bump = _bumper(keys, delete)
    if connection.in_atomic_block:
        bump()  # the rest of this transaction reads its own writes
    transaction.on_commit(bump)  # at once outside a transaction


def _bumper(keys: list[str], delete: Iterable[str] = ()) -> Callable[[], None]:
    """New tokens for the versions `keys` (and `delete` removed), when called."""

    def bump() -> None:
        if _backend() is None:
            return
        if _state.pending or _down():
            # Not worth a timeout now: the epoch is bumped once the cache answers again.
            _state.pending = True
            _schedule_retry()
            return
        try:
            backend = _backend()
            assert backend is not None  # noqa: S101 -- checked above; narrows for mypy
            failed = backend.set_many({k: new_token() for k in keys}, _version_ttl(backend))
            if delete:
                backend.delete_many(list(delete))
        except WRITE_UNAVAILABLE:
            failed = keys
        if failed:
            lost_write("invalidate")

    return bump


# --- Reads: used by web/access.py -----------------------------------------------------------


class Read:
    """Raw entries and current version tokens, fetched in one round trip."""

    def __init__(self, backend: BaseCache, raw: dict[str, Any], versions: dict[str, int]):
        self.backend = backend
        self.raw = raw
        self.versions = versions

    def tags(self, *keys: str) -> list[int]:
        return [self.versions[k] for k in keys]

    def entry(self, key: str, kind: type[T], tags: list[int]) -> T | None:
        """The entry under `key` if it was computed at these tags; None for a miss."""
        found = self.tagged(key, kind)
        return found[1] if found is not None and found[0] == tags else None

    def tagged(self, key: str, kind: type[T]) -> tuple[list[int], T] | None:
        """The entry under `key` and the tags it was computed at, current or not."""
        raw = self.raw.get(key)
        if raw is None:
            return None
        try:
            if not isinstance(raw, bytes):
                raise msgspec.DecodeError(f"a {type(raw).__name__}, not bytes")
            entry = msgspec.json.decode(raw, type=Entry)
            return entry.tags, msgspec.json.decode(entry.data, type=kind)
        except msgspec.MsgspecError:
            metrics.CACHE_ERRORS.labels("decode").inc()
            self.raw.pop(key)
            return None

    def more_versions(self, keys: list[str]) -> dict[str, int] | None:
        """Current tokens for more versions (one round trip), or None if the cache failed."""
        try:
            return _versions(self.backend, get_many(self.backend, keys), keys)
        except UNAVAILABLE:
            _failed("get")
            return None

    def write(self, entries: dict[str, tuple[list[int], Any]]) -> None:
        """Store entries (key -> (tags, data)); a failure only costs the next read a miss."""
        try:
            self.backend.set_many(
                {
                    key: msgspec.json.encode(Entry(tags, msgspec.Raw(msgspec.json.encode(data))))
                    for key, (tags, data) in entries.items()
                }
            )
        except WRITE_UNAVAILABLE:
            _failed("set")


def read(kind: str, keys: list[str], versions: list[str]) -> Read | None:
    """Entries and the current version tokens in one round trip; None: use the database."""
    backend = _usable()
    if backend is None:
        if _backend() is not None:
            metrics.CACHE_LOOKUPS.labels(kind, "unavailable").inc()
        return None
    try:
        raw = get_many(backend, [*keys, *versions])
        return Read(backend, raw, _versions(backend, raw, versions))
    except UNAVAILABLE:
        _failed("get")
        metrics.CACHE_LOOKUPS.labels(kind, "unavailable").inc()
        return None


def usable() -> BaseCache | None:
    """The process's cache client if it may be used now (web/sessions.py); None: skip it."""
    return _usable()


def lost_write(op: str) -> None:
    """A write (a bump, a session's save or delete) did not reach the cache: the epoch is
    bumped once it answers, so nothing it kept from before is read again."""
    if _backend() is None:
        return  # no cache: nothing kept
    _state.pending = True
    _failed(op)


def new_token() -> int:
    return secrets.randbits(62)


def _versions(backend: BaseCache, raw: dict[str, Any], keys: list[str]) -> dict[str, int]:
    """The tokens under these keys, setting a new one where there is none (or garbage)."""
    found = {k: v for k in keys if type(v := raw.get(k)) is int}
    # A set, not an add: a token only has to be one no entry was computed at before.
    missing = {k: new_token() for k in keys if k not in found}
    if missing:
        backend.set_many(missing, _version_ttl(backend))
    return {**found, **missing}


def _version_ttl(backend: BaseCache) -> int | None:
    # Longer than the entries that carry them; a token that expired is replaced by a new one.
    ttl = backend.default_timeout
    return None if ttl is None else 2 * int(ttl)


# --- Per process: the backend, and what happened to it --------------------------------------


class _State:
    def __init__(self) -> None:
        self.backend: BaseCache | None = None
        self.resolved = False
        self.down_until = 0.0  # monotonic: until then, the database only
        self.pending = False  # an invalidation was lost: bump the epoch before trusting entries
        self.retry: threading.Timer | None = None


_state = _State()


def _backend() -> BaseCache | None:
    """One backend object per process (Django's `caches` makes one per async context, each
    with its own connections); None when caching is off (DummyCache)."""
    if not _state.resolved:
        backend = caches.create_connection("default")
        _state.backend = None if isinstance(backend, DummyCache) else backend
        _state.resolved = True
    return _state.backend


def _down() -> bool:
    return time.monotonic() < _state.down_until


def _usable() -> BaseCache | None:
    backend = _backend()
    if backend is None or _down():
        return None
    if _state.pending and not _bump_epoch(backend):
        return None
    return backend


def _bump_epoch(backend: BaseCache) -> bool:
    try:
        backend.set(EPOCH, new_token(), _version_ttl(backend))
    except WRITE_UNAVAILABLE:
        _failed("invalidate")
        return False
    _state.pending = False
    logger.info("cache reachable again: every entry from before is stale now (epoch bumped)")
    return True


def _failed(op: str) -> None:
    from django.conf import settings

    metrics.CACHE_ERRORS.labels(op).inc()
    first = time.monotonic() >= _state.down_until
    _state.down_until = time.monotonic() + settings.CACHE_RETRY_SECONDS
    if first:
        logger.warning("cache %s failed; reading the database only for a while", op, exc_info=True)
    if _state.pending:
        _schedule_retry()


def _schedule_retry() -> None:
    """Bump the epoch in the background once the cache answers, even if nothing reads."""
    from django.conf import settings

    if _state.retry is not None and _state.retry.is_alive():
        return

    def retry() -> None:
        backend = _backend()
        if backend is not None and _state.pending and not _bump_epoch(backend):
            _state.retry = None
            _schedule_retry()

    _state.retry = threading.Timer(settings.CACHE_RETRY_SECONDS, retry)
    _state.retry.daemon = True
    _state.retry.start()


def _forget(**kwargs: Any) -> None:
    if kwargs.get("setting") in (None, "CACHES", "CACHE_RETRY_SECONDS"):
        if _state.retry is not None:
            _state.retry.cancel()
        if _state.backend is not None:
            _state.backend.close()
            # Django's RedisCache.close() leaves its connection pools open.
            client = getattr(_state.backend, "_cache", None)
            for pool in getattr(client, "_pools", {}).values():
                pool.disconnect()
        _state.__init__()  # type: ignore[misc]  # a fresh state: tests switch backends
        cache_bumps.forget()


setting_changed.connect(_forget, dispatch_uid="web.cache.forget")


def forget() -> None:
    """Start over (tests): the backend is looked up again and past failures are forgotten."""
    _forget()
