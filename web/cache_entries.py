"""A cache entry's encoding, and reading entries back when one does not decode (web/cache.py)."""

from __future__ import annotations

from typing import Any

import msgspec
from django.core.cache.backends.base import BaseCache
from pymemcache.exceptions import MemcacheError

from project import metrics, redis_config

# The cache service failing (down, timed out, refused); anything else a read raises is an
# entry that did not decode.
UNAVAILABLE = (OSError, *redis_config.ERRORS, MemcacheError)
# Writes also: pymemcache's HashClient (Django's PyMemcacheCache) can raise ValueError ("No
# such node ... to remove") when a server fails again while its dead-server bookkeeping is
# half-way (retry_attempts=0); the server is down all the same. Seen in tests/test_cache_faults.py.
WRITE_UNAVAILABLE = (*UNAVAILABLE, ValueError)


class Entry(msgspec.Struct, array_like=True):
    """A cached value and the version tokens it was computed at."""

    tags: list[int]
    data: msgspec.Raw


def get_many(backend: BaseCache, keys: list[str]) -> dict[str, Any]:
    try:
        return backend.get_many(keys)
    except UNAVAILABLE:
        raise
    except ValueError as error:
        if "No such node" in str(error):  # pymemcache's bookkeeping: see WRITE_UNAVAILABLE
            raise MemcacheError(str(error)) from error
        return get_each(backend, keys)
    except Exception:
        return get_each(backend, keys)


def get_each(backend: BaseCache, keys: list[str]) -> dict[str, Any]:
    """An entry the backend could not unpickle: find it, drop it, keep the others."""
    found = {}
    for key in keys:
        try:
            value = backend.get(key)
        except UNAVAILABLE:
            raise
        except Exception:
            metrics.CACHE_ERRORS.labels("decode").inc()
            backend.delete(key)
            continue
        if value is not None:
            found[key] = value
    return found
