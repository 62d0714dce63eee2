"""When users last had a socket open, and who is online in a room: what presence keeps
(realtime/presence.py), read from anywhere, a worker process included.

With REDIS_URL, realtime/presence.py writes, for each user with a socket in a process,
`chat:{seen}:<user id>`: a sorted set of processes scored with the time (ms, Redis' clock)
they stop vouching for the user, renewed every PRESENCE_HEARTBEAT_SECONDS; and the
user's last time in the hash `chat:{seen}:last` (at every heartbeat, and when the process's
last socket of the user closes). The `{seen}` hash tag keeps all of them in one slot of a
Redis Cluster, since one script reads and writes many users' keys at once; what goes there
is small (one heartbeat per process and interval), so one shard holding it is no hot spot.
So a worker process (a Celery task) reads Redis, not any server's memory; a process killed
without a goodbye stops vouching after PRESENCE_TTL_SECONDS and the user's last heartbeat is
what remains. Without REDIS_URL the one process keeps the same in memory (`LOCAL`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings

PRESENCE_PREFIX = "chat:presence:"  # + "{<room id>}:m" and ":n": realtime/presence_store.py
LAST_SEEN_KEY = "chat:{seen}:last"
SEEN_PREFIX = "chat:{seen}:"  # the scripts below spell it out: keep them in step

# Millisecond time from Redis' own clock, so the processes' clocks do not matter.
NOW_MS = "local t = redis.call('TIME')\nlocal now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS[1]: the last-seen hash. ARGV: ttl ms, this process, user ids with a socket here.
SEEN = (
    NOW_MS
    + """
for i = 3, #ARGV do
    local key = 'chat:{seen}:' .. ARGV[i]
    redis.call('ZADD', key, now + tonumber(ARGV[1]), ARGV[2])
    redis.call('PEXPIRE', key, ARGV[1])
    redis.call('HSET', KEYS[1], ARGV[i], now)
end
return 0
"""
)

# KEYS[1]: the last-seen hash. ARGV: this process, user ids whose last socket here closed.
SEEN_LEAVE = (
    NOW_MS
    + """
for i = 2, #ARGV do
    redis.call('ZREM', 'chat:{seen}:' .. ARGV[i], ARGV[1])
    redis.call('HSET', KEYS[1], ARGV[i], now)
end
return 0
"""
)

# KEYS[1]: the last-seen hash. ARGV: user ids. Each one's time in ms, now if a process
# still vouches for it, false when never seen.
LAST_SEEN = (
    NOW_MS
    + """
local out = {}
for i = 1, #ARGV do
    if redis.call('ZCOUNT', 'chat:{seen}:' .. ARGV[i], now, '+inf') > 0 then
        out[i] = now
    else
        out[i] = redis.call('HGET', KEYS[1], ARGV[i])
    end
end
return out
"""
)


# KEYS: the room's set. The users with a member not expired (a read: it sweeps nothing).
ONLINE = (
    NOW_MS
    + """
local users = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
    users[string.sub(m, string.find(m, '|', 1, true) + 1)] = true
end
local list = {}
for u in pairs(users) do table.insert(list, u) end
return list
"""
)


class LocalSeen:
    """The same, in this process's memory (no REDIS_URL)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # written on the event loop, read from other threads
        self.open: set[Any] = set()
        self.last: dict[Any, float] = {}
        # room id -> username -> sockets: realtime/presence_store.py's MemoryStore keeps them
        self.rooms: dict[int, dict[str, int]] = {}

    def seen(self, user_ids: Iterable[Any], *, still_open: bool) -> None:
        now = time.time()
        with self.lock:
            for user_id in user_ids:
                self.last[user_id] = now
                if still_open:
                    self.open.add(user_id)
                else:
                    self.open.discard(user_id)

    def read(self, user_ids: Sequence[int]) -> dict[int, float | None]:
        now = time.time()
        with self.lock:
            return {u: now if u in self.open else self.last.get(u) for u in user_ids}


LOCAL = LocalSeen()


def room_keys(room_id: int) -> list[str]:
    """A room's presence keys: its members' sorted set and its users' hash. The `{<room id>}`
    hash tag keeps both in one slot of a Redis Cluster: the scripts touch them together."""
    return [f"{PRESENCE_PREFIX}{{{room_id}}}:m", f"{PRESENCE_PREFIX}{{{room_id}}}:n"]


_clients: dict[str, Any] = {}  # by REDIS_URL: a pooled client for any thread


def last_seen(user_ids: Sequence[int]) -> dict[int, float | None]:
    """Unix time each user last had an open socket (now if one is open); None: not known."""
    if not user_ids:
        return {}
    if not settings.REDIS_URL:
        return LOCAL.read(user_ids)
    answers = _redis().eval(LAST_SEEN, 1, LAST_SEEN_KEY, *user_ids)
    return {
        user_id: None if ms is None else int(ms) / 1000
        for user_id, ms in zip(user_ids, answers, strict=True)
    }


def online_users(room_id: int) -> list[str]:
    """The usernames with a socket subscribed to the room now, sorted. Blocks on Redis (when
    REDIS_URL is set): call it from a thread."""
    if not settings.REDIS_URL:
        return sorted(LOCAL.rooms.get(room_id, {}))
    users = _redis().eval(ONLINE, 1, room_keys(room_id)[0])
    return sorted(u.decode() if isinstance(u, bytes) else str(u) for u in users)


def _redis() -> Any:
    url = str(settings.REDIS_URL)
    client = _clients.get(url)
    if client is None:
        from realtime import redis_clients  # the timeouts of every Redis client, in one place

        client = _clients[url] = redis_clients.publisher(url)
    return client
