"""Flood control for websocket clients: limits per connection and per user.

Every budget is a (rate, burst) pair counted as a window of `burst` per ceil(burst / rate)
seconds (`cluster_limits.window`): a sliding-window counter, by the `limits` package in Redis
and by `Counters` in this process.

Per connection (publishes, typing notices, strikes): `Counters` in this process's memory.
Per user (the connection cap, the publish and typing budgets): with REDIS_URL, one cap and
one budget for the whole cluster, kept in Redis (realtime/cluster_limits.py). Without
REDIS_URL, and while Redis does not answer, they are this process's own, counted like the
connection's: with K processes a user then gets up to K times the per-user budget and cap.
Each connection is held to its own limits always.

Typing notices are also throttled per user and room (`allow_typing_notice`): one relayed per
TYPING_INTERVAL_SECONDS, the others dropped without an error (a client sends one per
keystroke burst; refusing those would be noise, not flood control).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from time import monotonic

from django.conf import settings

from project import metrics
from realtime.cluster_limits import get_cluster_limits, window
from realtime.process import get_process

# Refusals by kind, looked up once: `publish` and `typing` (a connection's or user's budget),
# `connections` (the user's cap), `process_connections` (MAX_CONNECTIONS_PER_PROCESS).
REFUSED = {
    kind: metrics.RATE_LIMITED.labels(kind)
    for kind in ("publish", "typing", "connections", "process_connections")
}
metrics.WS_CONNECTIONS_LIMIT.set(settings.MAX_CONNECTIONS_PER_PROCESS)


@lru_cache(maxsize=16)
def shape(rate: float, burst: float) -> tuple[int, int]:
    """(hits, seconds) of the budget's window: the one the `limits` package counts in Redis."""
    item = window(rate, burst)
    return item.amount, item.get_expiry()


class Window:
    """One budget's sliding-window counter: the hits of the current window and the previous.

    As the `limits` package counts it: a hit is allowed while the previous window's hits,
    weighted by the part of it still inside a sliding window, plus the current's are under
    the limit. Windows follow one another from the first hit, as the package's memory
    storage starts them: a burst is counted in one window, not split by a boundary that
    happens to fall inside it (which would let a hit over the limit through).
    """

    __slots__ = ("current", "index", "origin", "previous")

    def __init__(self, origin: float) -> None:
        self.origin = origin  # the first hit's monotonic time
        self.index = 0
        self.previous = 0
        self.current = 0

    def take(self, limit: int, seconds: int) -> bool:
        at = (monotonic() - self.origin) / seconds
        index = int(at)
        if index != self.index:
            self.previous = self.current if index == self.index + 1 else 0
            self.current = 0
            self.index = index
        if int(self.previous * (1 - (at - index))) + self.current >= limit:
            return False
        self.current += 1
        return True


class Counters:
    """The budgets of one connection or one user in this process, each made on first use.

    By hand, not the `limits` package's MemoryStorage: that cost 6.6 us per hit (15 us per
    allowed publish, two hits, and ~2 KB per publishing connection: a storage, its locks and
    an expiry task), the largest cost of a publish after the socket writes; this costs
    ~0.5 us and ~110 bytes. Of the libraries measured, throttled-py's sliding window took
    4.6 us; token-bucket 0.5 us, but it is a token bucket, one fixed rate per limiter and a
    keyed storage that is never emptied. Sync: no await, task nor timer per hit.
    """

    # A slot per kind rather than a dict: an owner keeps at most three windows.
    __slots__ = ("publish", "strikes", "typing")

    def __init__(self) -> None:
        self.publish: Window | None = None
        self.typing: Window | None = None
        self.strikes: Window | None = None

    def hit(self, kind: str, rate: float, burst: float) -> bool:
        """Take one from the budget `kind` (publish, typing, strikes): whether it was there."""
        limit, seconds = shape(rate, burst)
        counter: Window | None = getattr(self, kind)
        if counter is None:
            counter = Window(monotonic())
            setattr(self, kind, counter)
        return counter.take(limit, seconds)


@dataclass(slots=True)
class UserState:
    """A user's connections in this process, and the per-user budgets."""

    user_id: object
    connections: int = 0
    # This process's own budgets: used without REDIS_URL, and while Redis does not answer.
    own: Counters | None = None
    # Tokens of the user's shared budget taken from Redis at once (a lease), left to spend
    # here without asking, by budget.
    leases: dict[str, int] = field(default_factory=dict)

    async def allow_publish(self) -> bool:
        return await self._allow("publish", settings.USER_PUBLISH_RATE, settings.USER_PUBLISH_BURST)

    async def allow_typing(self) -> bool:
        return await self._allow("typing", settings.TYPING_RATE * 2, settings.TYPING_BURST * 2)

    async def _allow(self, kind: str, rate: float, burst: float) -> bool:
        """The user's shared budget, spent from a lease when one is held: one Redis round
        trip per USER_BUDGET_LEASE of the burst, not per publish.

        What a lease takes is counted in Redis when taken, in that window, so the cluster
        lets through at most the burst per window plus, per process, the one lease it holds
        (taken in an earlier window, spent in this one). That bound holds whatever the
        lease's age, so a lease is kept until it is spent (or the user leaves this process):
        a user who writes less often than once per window does not pay a round trip for
        each message.
        """
        shared = get_cluster_limits()
        if shared is not None:
            if self.leases.get(kind, 0) > 0:
                self.leases[kind] -= 1
                return True
            want = max(1, int(burst * settings.USER_BUDGET_LEASE))
            taken = await shared.take(kind, self.user_id, rate, burst, want)
            if taken is not None:
                self.leases[kind] = max(0, taken - 1)
                return taken > 0
        if self.own is None:
            self.own = Counters()
        return self.own.hit(kind, rate, burst)


def process_full() -> bool:
    """Whether this process holds MAX_CONNECTIONS_PER_PROCESS sockets already (then a new one
    is refused: the memory and event loop of one process are finite; other pods have room)."""
    if len(get_process().sockets) < settings.MAX_CONNECTIONS_PER_PROCESS:
        return False
    REFUSED["process_connections"].inc()
    return True


async def connect(user_id: object) -> UserState | None:
    """Count a new connection of the user; None when the user is at the cap."""
    users = get_process().users
    state = users.get(user_id)
    if state is None:
        state = users[user_id] = UserState(user_id)
    # This process's count is never more than the cluster's: at the cap here, no need to ask.
    if state.connections >= settings.MAX_CONNECTIONS_PER_USER:
        REFUSED["connections"].inc()
        return None
    # Counted before Redis is asked, so connections racing in here see it.
    state.connections += 1
    get_process().presence.connected(user_id)  # when users were last seen (web/activity.py)
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
        REFUSED["connections"].inc()
        return None
    return state  # seated, or Redis did not answer and this process's count decided


TYPING_KEPT = 10_000  # (user, room) entries of the per-process typing check before a prune


async def allow_typing_notice(user_id: object, room_id: int) -> bool:
    """Whether to relay this typing notice: at most one per TYPING_INTERVAL_SECONDS per user
    and room. This process's memory first (no round trip for the notices it already saw);
    then, with REDIS_URL, the cluster's (the `limits` package's sliding-window counter, in
    Redis), so two tabs on two pods relay one. While Redis does not answer, this process's
    decides."""
    interval: float = settings.TYPING_INTERVAL_SECONDS
    sent = get_process().typing_sent
    now, key = time.monotonic(), (user_id, room_id)
    if now - sent.get(key, -interval) < interval:
        return False
    shared = get_cluster_limits()
    # The package's windows are whole seconds: the interval is rounded up to one.
    if (
        shared is not None
        and await shared.hit(f"typing:{room_id}", user_id, 1 / interval, 1) is False
    ):
        return False
    if len(sent) >= TYPING_KEPT:
        for old in [k for k, at in sent.items() if now - at >= interval]:
            del sent[old]
    sent[key] = now
    return True


def disconnect(user_id: object) -> None:
    """Stop counting one connection of the user. Sync: it runs in a finally."""
    state = get_process().users.get(user_id)
    if state is None:
        return
    _uncount(user_id, state)
    shared = get_cluster_limits()
    if shared is not None:
        shared.release(user_id)


def _uncount(user_id: object, state: UserState) -> None:
    state.connections -= 1
    get_process().presence.disconnected(user_id)
    if state.connections <= 0:
        get_process().users.pop(user_id, None)  # nothing kept for users with no connection


@dataclass(slots=True)
class ConnectionLimits:
    """One connection's budgets, and its strikes: refusals that close it when they pile up."""

    user: UserState
    own: Counters | None = None  # made on the first publish or typing notice
    struck_out: bool = False

    async def allow_publish(self) -> bool:
        return await self._allow("publish", settings.PUBLISH_RATE, settings.PUBLISH_BURST)

    async def allow_typing(self) -> bool:
        return await self._allow("typing", settings.TYPING_RATE, settings.TYPING_BURST)

    async def _allow(self, kind: str, rate: float, burst: float) -> bool:
        """This connection's budget, then the user's; a refusal is a strike."""
        user_allows = self.user.allow_publish if kind == "publish" else self.user.allow_typing
        if self.own is None:
            self.own = Counters()
        if self.own.hit(kind, rate, burst) and await user_allows():
            return True
        # Every refusal is a strike, taken here; the consumer then asks strike() the verdict.
        REFUSED[kind].inc()
        strikes, per_second = settings.RATE_STRIKES, settings.RATE_STRIKES_PER_SECOND
        self.struck_out = not self.own.hit("strikes", per_second, strikes)
        return False

    def strike(self) -> bool:
        """After a refusal: False when the client kept going and must be closed."""
        return not self.struck_out
