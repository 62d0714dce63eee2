"""Sessions: Django's cached_db, through the cache of web/cache.py.

The database keeps every session; the cache only saves reading it. Through web/cache.py
rather than Django's `caches`: one client per process (Django's makes one per ASGI request,
each with a new connection), the database alone while the cache fails, and each cached
copy tagged with the cache's epoch, so a copy the cache could not drop (a logout while it
was unreachable) is a miss once the epoch has been bumped, not a session that still works.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends import cached_db

from web import cache
from web.cache_entries import UNAVAILABLE


class EpochCache:
    """The part of Django's cache API that cached_db uses."""

    def get(self, key: str, default: Any = None) -> Any:
        found = cache.read("session", [key], [cache.EPOCH])
        if found is None:
            return default
        value = found.raw.get(key)
        if isinstance(value, tuple) and len(value) == 2 and value[0] == found.tags(cache.EPOCH)[0]:
            return value[1]
        return default

    def set(self, key: str, value: Any, expiry: Any = None) -> None:
        found = cache.read("session", [], [cache.EPOCH])
        if found is None:
            cache.lost_write("session")  # the cache may still hold an older copy
            return
        try:
            found.backend.set(key, (found.tags(cache.EPOCH)[0], value), expiry)
        except UNAVAILABLE:
            cache.lost_write("session")

    def delete(self, key: str) -> None:
        backend = cache.usable()
        if backend is None:
            cache.lost_write("session")
            return
        try:
            backend.delete(key)
        except UNAVAILABLE:
            cache.lost_write("session")

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    async def aget(self, key: str, default: Any = None) -> Any:
        return await sync_to_async(self.get)(key, default)

    async def aset(self, key: str, value: Any, expiry: Any = None) -> None:
        await sync_to_async(self.set)(key, value, expiry)

    async def adelete(self, key: str) -> None:
        await sync_to_async(self.delete)(key)


class SessionStore(cached_db.SessionStore):
    def __init__(self, session_key: str | None = None):
        super().__init__(session_key)
        self._cache = EpochCache()
