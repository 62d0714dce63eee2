"""Per-user limits every process shares through Redis (with REDIS_URL): the connection cap
and the per-user publish and typing budgets. realtime/limits.py is the way in.

Connections: a sorted set per user, `chat:conns:<user id>`, one member per socket
(`<process>:<n>`), scored with the time it stops counting. Connecting trims what
expired, counts and adds in one script; hanging up removes the member; every
CONNECTION_REFRESH_SECONDS each process re-announces its live sockets in one
pipelined round trip. So the sockets of a process that died (SIGKILL) stop
counting CONNECTION_TTL_SECONDS after its last refresh, a Redis that restarted
empty learns the live ones again, and a user with no socket has no key. The
scripts read Redis' clock, so the processes' clocks do not matter here.

Budgets: the `limits` package's sliding-window counter, over the same connections: two
counters per user and budget (hash-tagged onto one slot by the package), so taking a lease
of any size (realtime/limits.py) is one INCRBY, where a moving window would push one list
entry per token.

Every call is bounded by LIMITS_REDIS_TIMEOUT. When Redis fails, calls answer
None at once for LIMITS_REDIS_RETRY_SECONDS and realtime/limits.py uses the
in-process limits meanwhile: an outage costs one timeout per retry period, not
one per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import lru_cache, partial
from typing import Any, TypeVar

from django.conf import settings

# The `limits` package from PyPI (rate-limit strategies over Redis), not realtime.limits.
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisClusterStorage as LimitsClusterStorage
from limits.aio.storage import RedisStorage as LimitsRedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from project import redis_config
from realtime import redis_clients
from realtime.process import get_process
from realtime.tasks import spawn

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONNS_PREFIX = "chat:conns:"
LIMITS_PREFIX = "chat:limits"
REFRESH_BATCH = 500  # commands per pipelined round trip of a refresh
MAX_ORPHANS = 10_000  # removals kept for retry; past that, they expire with their TTL
WARN_EVERY = 60.0  # seconds between two warnings that Redis failed

# Millisecond times from Redis' own clock.
NOW_MS = "local t = redis.call('TIME')\nlocal now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS[1]: the user's set. ARGV: member, cap, ttl in ms. 1 when counted, 0 at the cap.
SEAT = (
    NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS[1]: the user's set. ARGV: ttl in ms, then the members this process still holds.
TOUCH = (
    NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""
)


@lru_cache(maxsize=16)
def window(rate: float, burst: float) -> RateLimitItem:
    """A token bucket (rate, burst) as a window of `burst` per ceil(burst / rate) s.

    The package's windows are whole seconds, so the burst stays and the sustained rate is
    at most the configured one (the per-user typing default, 10 per 2.5 s, is 10 per 3 s).
    """
    seconds = math.ceil(burst / rate) if rate > 0 else 86_400
    return RateLimitItemPerSecond(max(1, int(burst)), max(1, seconds))


class ClusterLimits:
    """One process's client for the shared limits."""

    def __init__(self) -> None:
        timeout: float = settings.LIMITS_REDIS_TIMEOUT
        self.timeout = timeout
        url = str(settings.REDIS_URL)
        self.redis = redis_clients.limits_client(url)
        self.seat_script = self.redis.register_script(SEAT)
        self.touch_script = self.redis.register_script(TOUCH)
        self.limiter = SlidingWindowCounterRateLimiter(self._storage(url))
        self.process = uuid.uuid4().hex[:12]
        self.numbers = itertools.count()
        self.live: dict[object, list[str]] = {}  # user id -> members of sockets here
        self.orphans: set[tuple[str, str]] = set()  # (key, member) removals that failed
        self.down_until = 0.0
        self.down_since: float | None = None
        self.warned_at = -WARN_EVERY
        self.warned = False
        self.idle = asyncio.Event()  # clear while a refresh is under way
        self.idle.set()
        self.wake = asyncio.Event()
        self.refresher: asyncio.Task[None] | None = None

    def _storage(self, url: str) -> LimitsRedisStorage:
        """The `limits` package's storage on the same Redis. Its keys are one per user and
        budget, so its scripts stay on one slot of a Cluster."""
        cluster = redis_config.cluster_of(url)
        if cluster is None:
            # The package only picks its redis-py bridge from the URL; the address and any
            # password stay in our pool, which it uses as it is.
            pool: Any = getattr(self.redis, "connection_pool", None)
            return LimitsRedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix=LIMITS_PREFIX,
                connection_pool=pool,
            )
        # A Cluster client of its own (the package makes it from the seed nodes), with the
        # same timeouts; the password goes as an option, not in the URL it may print.
        options = redis_clients.cluster_options(redis_clients.limits_options())
        seeds = ",".join(f"{host}:{port}" for host, port in cluster.nodes)
        if cluster.password:
            options["password"] = cluster.password
        return LimitsClusterStorage(
            f"async+redis+cluster://{seeds}",
            implementation="redispy",
            key_prefix=LIMITS_PREFIX,
            **options,
        )

    # Connections.

    async def seat(self, user_id: object) -> bool | None:
        """Count a new socket of the user: True, False at the cap, None when Redis did not
        answer (it is counted, then, from the first refresh Redis answers)."""
        member = f"{self.process}:{next(self.numbers)}"
        key = CONNS_PREFIX + str(user_id)
        cap, ttl = settings.MAX_CONNECTIONS_PER_USER, _ttl_ms()
        try:
            answer = await self._run(lambda: self.seat_script(keys=[key], args=[member, cap, ttl]))
        except BaseException:
            self._orphan(key, member)  # cancelled: Redis may have counted it
            raise
        if answer == 0:
            return False
        self.live.setdefault(user_id, []).append(member)
        if self.refresher is None or self.refresher.done():
            self.refresher = spawn(self._refresh_forever(), name="connection cap refresh")
        return None if answer is None else True

    def release(self, user_id: object) -> None:
        """Stop counting one of the user's sockets here. Sync (it runs in a finally): the
        removal is a task. Which member goes does not matter: they are all alike."""
        members = self.live.get(user_id)
        if not members:
            return
        member = members.pop()
        if not members:
            del self.live[user_id]
        key = CONNS_PREFIX + str(user_id)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._orphan(key, member)
            return
        spawn(self._remove(key, member), name="connection cap release")

    async def _remove(self, key: str, member: str) -> None:
        # After a refresh under way, which may still carry this member: never re-added later.
        await self.idle.wait()
        if await self._run(lambda: self.redis.zrem(key, member)) is None:
            self._orphan(key, member)

    def _orphan(self, key: str, member: str) -> None:
        if len(self.orphans) < MAX_ORPHANS:
            self.orphans.add((key, member))

    async def refresh(self) -> None:
        """Re-announce this process's live sockets and retry the removals that failed."""
        if not self.live and not self.orphans:
            return
        self.idle.clear()
        try:
            ttl = _ttl_ms()
            touches = [(CONNS_PREFIX + str(u), members) for u, members in self.live.items()]
            for start in range(0, len(touches), REFRESH_BATCH):
                batch = touches[start : start + REFRESH_BATCH]
                if await self._run(partial(self._touch, ttl, batch)) is None:
                    return
            orphans = list(self.orphans)
            for start in range(0, len(orphans), REFRESH_BATCH):
                removals = orphans[start : start + REFRESH_BATCH]
                if await self._run(partial(self._remove_all, removals)) is None:
                    return
                self.orphans.difference_update(removals)
        finally:
            self.idle.set()

    async def _touch(self, ttl: int, touches: list[tuple[str, list[str]]]) -> list[object]:
        return await redis_clients.run_scripts(
            self.redis, [(self.touch_script, [key], [ttl, *members]) for key, members in touches]
        )

    async def _remove_all(self, removals: list[tuple[str, str]]) -> list[object]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, member in removals:
                pipe.zrem(key, member)
            result: list[object] = await pipe.execute()
            return result

    async def _refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), settings.CONNECTION_REFRESH_SECONDS)
            self.wake.clear()
            try:
                await self.refresh()
            except Exception:
                logger.exception("refreshing the connection counts failed")

    # Budgets.

    async def hit(self, kind: str, user_id: object, rate: float, burst: float) -> bool | None:
        """Take one from the user's shared budget: whether it was there, None when Redis did
        not answer."""
        item = window(rate, burst)
        return await self._run(lambda: self.limiter.hit(item, kind, str(user_id)))

    async def take(
        self, kind: str, user_id: object, rate: float, burst: float, want: int
    ) -> int | None:
        """Take `want` from the user's shared budget if they are there, else one: how many
        were taken (0 when none was left), None when Redis did not answer."""
        item, key = window(rate, burst), str(user_id)

        async def call() -> int:
            if want > 1 and await self.limiter.hit(item, kind, key, cost=want):
                return want
            return 1 if await self.limiter.hit(item, kind, key) else 0

        return await self._run(call)

    # Talking to Redis.

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """The call's answer, or None when Redis failed, now or less than a retry period ago."""
        if time.monotonic() < self.down_until:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                answer = await call()
        except (*redis_config.ERRORS, OSError) as error:  # OSError includes TimeoutError
            self._failed(error)
            return None
        if self.down_since is not None:
            self._back()
        return answer

    def _failed(self, error: BaseException) -> None:
        now = time.monotonic()
        self.down_until = now + settings.LIMITS_REDIS_RETRY_SECONDS
        if self.down_since is not None:
            return
        self.down_since = now
        # One line per outage, and no more than one a minute when Redis flaps. The error's
        # type only: its text could carry the address.
        self.warned = now - self.warned_at >= WARN_EVERY
        if self.warned:
            self.warned_at = now
            logger.warning(
                "Redis failed (%s): per-user limits are per process until it answers",
                type(error).__name__,
            )

    def _back(self) -> None:
        assert self.down_since is not None  # noqa: S101 -- narrows the type for mypy
        if self.warned:
            logger.warning(
                "Redis answers again after %.1f s: per-user limits are cluster-wide again",
                time.monotonic() - self.down_since,
            )
        self.down_since = None
        self.wake.set()  # announce the sockets it missed (or lost in a restart) now

    async def aclose(self) -> None:
        if self.refresher is not None:
            self.refresher.cancel()
        await self.redis.aclose()


def _ttl_ms() -> int:
    ttl: float = settings.CONNECTION_TTL_SECONDS
    return max(1, round(ttl * 1000))


def get_cluster_limits() -> ClusterLimits | None:
    """The process's shared limits with REDIS_URL (made on first use), else None."""
    if not settings.REDIS_URL:
        return None
    process = get_process()
    if process.cluster_limits is None:
        process.cluster_limits = ClusterLimits()
    cluster: ClusterLimits = process.cluster_limits
    return cluster


def reset_cluster_limits() -> None:
    """Forget the client (tests that change REDIS_URL or start a new event loop)."""
    get_process().cluster_limits = None
