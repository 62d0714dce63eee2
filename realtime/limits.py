"""Flood control for websocket clients: token buckets per connection and per user.

Per-user state is per process: with K processes a user gets at most K times the
per-user budget, and each connection is still held to its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.conf import settings


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
    connections: int = 0
    publish: TokenBucket = field(
        default_factory=lambda: TokenBucket(settings.USER_PUBLISH_RATE, settings.USER_PUBLISH_BURST)
    )
    typing: TokenBucket = field(
        default_factory=lambda: TokenBucket(settings.TYPING_RATE * 2, settings.TYPING_BURST * 2)
    )


_users: dict[object, UserState] = {}


def connect(user_id: object) -> UserState | None:
    """Count a new connection of the user; None when the user is at the cap."""
    state = _users.get(user_id)
    if state is None:
        state = _users[user_id] = UserState()
    if state.connections >= settings.MAX_CONNECTIONS_PER_USER:
        return None
    state.connections += 1
    return state


def disconnect(user_id: object) -> None:
    state = _users.get(user_id)
    if state is None:
        return
    state.connections -= 1
    if state.connections <= 0:
        del _users[user_id]  # nothing kept for users with no connection here


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

    def allow_publish(self) -> bool:
        return self.publish.take() and self.user.publish.take()

    def allow_typing(self) -> bool:
        return self.typing.take() and self.user.typing.take()

    def strike(self) -> bool:
        """Record one refusal; False when the client kept going and must be closed."""
        return self.strikes.take()
