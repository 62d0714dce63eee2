"""Where presence is kept: Redis, changed only by the Lua scripts here, or this process's memory.

Per room, `chat:presence:{<room id>}:m` is a sorted set of members "<process>|<username>"
scored with the millisecond time (Redis' clock) they expire, and `...:n` a hash username ->
number of processes holding the user. Each script sweeps the expired members first and
reports the users whose count fell to 0, so two processes sweeping at once never both
report one leave. Both keys expire PRESENCE_TTL_SECONDS after the last heartbeat: a room
nobody is in leaves nothing behind. Last-seen times (web/activity.py) are kept beside.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from django.conf import settings

from realtime.redis_clients import AsyncRedis, run_scripts
from web import activity

PREFIX = activity.PRESENCE_PREFIX

# KEYS: the room's set and hash. ARGV: ttl ms, "1" to return the online users, members to
# add or re-score. Returns {joined, left, online}.
JOIN = (
    activity.NOW_MS
    + """
local ttl = tonumber(ARGV[1])
local function user(m) return string.sub(m, string.find(m, '|', 1, true) + 1) end
local left = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)) do
    redis.call('ZREM', KEYS[1], m)
    if redis.call('HINCRBY', KEYS[2], user(m), -1) <= 0 then
        redis.call('HDEL', KEYS[2], user(m))
        table.insert(left, user(m))
    end
end
local joined = {}
for i = 3, #ARGV do
    if redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) == 1 then
        if redis.call('HINCRBY', KEYS[2], user(ARGV[i]), 1) == 1 then
            table.insert(joined, user(ARGV[i]))
        end
    end
end
-- Only ever later: another process's members may live longer than this one's.
for _, key in ipairs(KEYS) do
    if redis.call('EXISTS', key) == 1 and redis.call('PTTL', key) < ttl then
        redis.call('PEXPIRE', key, ttl)
    end
end
local online = {}
if ARGV[2] == '1' then online = redis.call('HKEYS', KEYS[2]) end
return {joined, left, online}
"""
)

# KEYS: the room's set and hash. ARGV: members leaving. Returns the users who left.
LEAVE = """
local left = {}
for i = 1, #ARGV do
    if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
        local u = string.sub(ARGV[i], string.find(ARGV[i], '|', 1, true) + 1)
        if redis.call('HINCRBY', KEYS[2], u, -1) <= 0 then
            redis.call('HDEL', KEYS[2], u)
            table.insert(left, u)
        end
    end
end
return left
"""

Changes = tuple[list[str], list[str]]  # joined, left


class Store(Protocol):
    async def join(
        self, room_id: int, members: list[str], *, online: bool
    ) -> tuple[list[str], list[str], list[str]]: ...
    async def leave(self, members: list[tuple[int, str]]) -> dict[int, list[str]]: ...
    async def beat(self, entries: dict[int, list[str]]) -> dict[int, Changes]: ...
    async def states(self, touched: dict[int, set[str]]) -> dict[int, set[str]]: ...
    async def online(self, room_id: int) -> list[str]: ...
    async def seen(self, process: str, user_ids: list[Any]) -> None: ...
    async def seen_leave(self, process: str, user_ids: list[Any]) -> None: ...
    async def aclose(self) -> None: ...


keys = activity.room_keys


def _ttl_ms() -> int:
    return max(1, round(float(settings.PRESENCE_TTL_SECONDS) * 1000))


def _strs(values: list[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class RedisStore:
    def __init__(self, redis: AsyncRedis):
        self.redis = redis
        self.join_script = redis.register_script(JOIN)
        self.leave_script = redis.register_script(LEAVE)
        self.online_script = redis.register_script(activity.ONLINE)
        self.seen_script = redis.register_script(activity.SEEN)
        self.seen_leave_script = redis.register_script(activity.SEEN_LEAVE)

    async def join(
        self, room_id: int, members: list[str], *, online: bool
    ) -> tuple[list[str], list[str], list[str]]:
        args: list[str | int] = [_ttl_ms(), "1" if online else "0", *members]
        joined, left, users = await self.join_script(keys=keys(room_id), args=args)
        return _strs(joined), _strs(left), _strs(users)

    async def leave(self, members: list[tuple[int, str]]) -> dict[int, list[str]]:
        by_room: dict[int, list[str]] = {}
        for room_id, member in members:
            by_room.setdefault(room_id, []).append(member)
        answers = await run_scripts(
            self.redis,
            [(self.leave_script, keys(room_id), members) for room_id, members in by_room.items()],
        )
        return {room_id: _strs(left) for room_id, left in zip(by_room, answers, strict=True)}

    async def beat(self, entries: dict[int, list[str]]) -> dict[int, Changes]:
        """Re-score this process's members (re-adding lost ones) and sweep their rooms."""
        if not entries:
            return {}
        ttl = _ttl_ms()
        answers = await run_scripts(
            self.redis,
            [
                (self.join_script, keys(room_id), [ttl, "0", *members])
                for room_id, members in entries.items()
            ],
        )
        return {
            room_id: (_strs(joined), _strs(left))
            for room_id, (joined, left, _) in zip(entries, answers, strict=True)
        }

    async def states(self, touched: dict[int, set[str]]) -> dict[int, set[str]]:
        """Of these users, per room, those online now."""
        rooms = {room_id: sorted(users) for room_id, users in touched.items()}
        async with self.redis.pipeline(transaction=False) as pipe:
            for room_id, users in rooms.items():
                pipe.hmget(keys(room_id)[1], users)
            answers = await pipe.execute()
        return {
            room_id: {u for u, n in zip(users, counts, strict=True) if n and int(n) > 0}
            for (room_id, users), counts in zip(rooms.items(), answers, strict=True)
        }

    async def online(self, room_id: int) -> list[str]:
        return _strs(await self.online_script(keys=keys(room_id)[:1]))

    async def seen(self, process: str, user_ids: list[Any]) -> None:
        if user_ids:
            args = [_ttl_ms(), process, *user_ids]
            await self.seen_script(keys=[activity.LAST_SEEN_KEY], args=args)

    async def seen_leave(self, process: str, user_ids: list[Any]) -> None:
        if user_ids:
            await self.seen_leave_script(keys=[activity.LAST_SEEN_KEY], args=[process, *user_ids])

    async def aclose(self) -> None:
        await self.redis.aclose()


class MemoryStore:
    """The same, in one process (no REDIS_URL: `make run`, unit tests). Nothing expires
    here but what this process forgets: a dead process takes its memory with it."""

    def __init__(self, seen: activity.LocalSeen):
        self.members: dict[int, dict[str, float]] = {}
        self.counts = seen.rooms  # web/activity.py's online_users reads them
        self.last_seen = seen

    async def join(
        self, room_id: int, members: list[str], *, online: bool
    ) -> tuple[list[str], list[str], list[str]]:
        scores, counts = self.members.setdefault(room_id, {}), self.counts.setdefault(room_id, {})
        now = time.time()
        left = [
            u for m in [m for m, at in scores.items() if at < now] for u in self._drop(room_id, m)
        ]
        joined = []
        for member in members:
            new = member not in scores
            scores[member] = now + float(settings.PRESENCE_TTL_SECONDS)
            user = member.partition("|")[2]
            if new:
                counts[user] = counts.get(user, 0) + 1
                if counts[user] == 1:
                    joined.append(user)
        return joined, left, list(counts) if online else []

    def _drop(self, room_id: int, member: str) -> list[str]:
        if self.members.get(room_id, {}).pop(member, None) is None:
            return []
        counts, user = self.counts[room_id], member.partition("|")[2]
        counts[user] -= 1
        if counts[user] > 0:
            return []
        del counts[user]
        return [user]

    async def leave(self, members: list[tuple[int, str]]) -> dict[int, list[str]]:
        left: dict[int, list[str]] = {}
        for room_id, member in members:
            left.setdefault(room_id, []).extend(self._drop(room_id, member))
        return left

    async def beat(self, entries: dict[int, list[str]]) -> dict[int, Changes]:
        changes = {}
        for room_id, members in entries.items():
            joined, left, _ = await self.join(room_id, members, online=False)
            changes[room_id] = (joined, left)
        return changes

    async def states(self, touched: dict[int, set[str]]) -> dict[int, set[str]]:
        return {
            r: {u for u in users if u in self.counts.get(r, {})} for r, users in touched.items()
        }

    async def online(self, room_id: int) -> list[str]:
        return list(self.counts.get(room_id, {}))

    async def seen(self, process: str, user_ids: list[Any]) -> None:
        self.last_seen.seen(user_ids, still_open=True)

    async def seen_leave(self, process: str, user_ids: list[Any]) -> None:
        self.last_seen.seen(user_ids, still_open=False)

    async def aclose(self) -> None:
        pass
