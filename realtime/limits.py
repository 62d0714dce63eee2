"""Flood control for websocket clients: limits per connection and per user.

Per connection (publishes, typing notices, strikes): token buckets in this process.
Per user (the connection cap, the publish and typing budgets): with REDIS_URL,
one cap and one budget for the whole cluster, kept in Redis
(realtime/cluster_limits.py). Without REDIS_URL, and while Redis does not answer,
they are this process's own: with K processes a user then gets up to K times
the per-user budget and cap. Each connection is held to its own limits always.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.conf import settings

from realtime.cluster_limits import get_cluster_limits


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens added per second
    burst: float  # the most it holds
    tokens: float = field(default=-1.0)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(slots=True)
class UserState:
    """A user's connections in this process, and the per-user budgets."""

    user_id: object
    connections: int = 0
    # This process's own buckets: used without REDIS_URL, and while Redis does not answer.
    publish: TokenBucket = field(
        default_factory=lambda: TokenBucket(settings.USER_PUBLISH_RATE, settings.USER_PUBLISH_BURST)
    )
    typing: TokenBucket = field(
        default_factory=lambda: TokenBucket(settings.TYPING_RATE * 2, settings.TYPING_BURST * 2)
    )

    async def allow_publish(self) -> bool:
        shared = get_cluster_limits()
        if shared is not None:
            rate, burst = settings.USER_PUBLISH_RATE, settings.USER_PUBLISH_BURST
            allowed = await shared.hit("publish", self.user_id, rate, burst)
            if allowed is not None:
                return allowed
        return self.publish.take()

    async def allow_typing(self) -> bool:
        shared = get_cluster_limits()
        if shared is not None:
            rate, burst = settings.TYPING_RATE * 2, settings.TYPING_BURST * 2
            allowed = await shared.hit("typing", self.user_id, rate, burst)
            if allowed is not None:
                return allowed
        return self.typing.take()


_users: dict[object, UserState] = {}


async def connect(user_id: object) -> UserState | None:
    """Count a new connection of the user; None when the user is at the cap."""
    state = _users.get(user_id)
    if state is None:
        state = _users[user_id] = UserState(user_id)
    # This process's count is never more than the cluster's: at the cap here, no need to ask.
    if state.connections >= settings.MAX_CONNECTIONS_PER_USER:
        return None
    # Counted before Redis is asked, so connections racing in here see it.
    state.connections += 1
    shared = get_cluster_limits()
    if shared is None:
        return state
    try:
        seated = await shared.seat(user_id)
    except BaseException:
        _uncount(user_id, state)
        raise
    if seated is False:
        _uncount(user_id, state)
        return None
    return state  # seated, or Redis did not answer and this process's count decided


def disconnect(user_id: object) -> None:
    """Stop counting one connection of the user. Sync: it runs in a finally."""
    state = _users.get(user_id)
    if state is None:
        return
    _uncount(user_id, state)
    shared = get_cluster_limits()
    if shared is not None:
        shared.release(user_id)


def _uncount(user_id: object, state: UserState) -> None:
    state.connections -= 1
    if state.connections <= 0:
        _users.pop(user_id, None)  # nothing kept for users with no connection here


@dataclass(slots=True)
class ConnectionLimits:
    """One connection's buckets, and its strikes: refusals that close it when they pile up."""

    user: UserState
    publish: TokenBucket = field(
        default_factory=lambda: TokenBucket(settings.PUBLISH_RATE, settings.PUBLISH_BURST)
    )
    typing: TokenBucket = field(
        default_factory=lambda: TokenBucket(settings.TYPING_RATE, settings.TYPING_BURST)
    )
    strikes: TokenBucket = field(
        default_factory=lambda: TokenBucket(settings.RATE_STRIKES_PER_SECOND, settings.RATE_STRIKES)
    )

    async def allow_publish(self) -> bool:
        return self.publish.take() and await self.user.allow_publish()

    async def allow_typing(self) -> bool:
        return self.typing.take() and await self.user.allow_typing()

    def strike(self) -> bool:
        """Record one refusal; False when the client kept going and must be closed."""
        return self.strikes.take()
