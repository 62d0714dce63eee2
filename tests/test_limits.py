"""Flood control in one process: a connection's budgets and strikes, and the per-user budgets
this process counts itself without Redis (tests/test_cluster_limits.py has the Redis side)."""

from __future__ import annotations

import asyncio
import gc
import uuid
from typing import Any

import pytest
from django.test import override_settings

from realtime import limits
from realtime.limits import ConnectionLimits, Counters, UserState
from realtime.process import get_process

# Tests of the connection's own budgets leave the user's out of the way.
ROOMY_USER: dict[str, Any] = {"USER_PUBLISH_RATE": 1000.0, "USER_PUBLISH_BURST": 1000.0}


def a_connection(user: UserState | None = None) -> ConnectionLimits:
    return ConnectionLimits(user or UserState(f"unit-{uuid.uuid4().hex[:8]}"))


class Clock:
    """The monotonic clock the counters read, moved by hand: no sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(limits, "monotonic", clock)
    return clock


def live_counters() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Counters)


@override_settings(PUBLISH_RATE=0.001, PUBLISH_BURST=3.0, **ROOMY_USER)
async def test_a_burst_is_allowed_then_refused() -> None:
    conn = a_connection()
    assert [await conn.allow_publish() for _ in range(4)] == [True, True, True, False]


@override_settings(PUBLISH_RATE=3.0, PUBLISH_BURST=3.0, **ROOMY_USER)
async def test_the_budget_comes_back_as_its_window_passes(clock: Clock) -> None:
    conn = a_connection()  # 3 per 1 s
    assert [await conn.allow_publish() for _ in range(4)] == [True, True, True, False]
    clock.now += 1.5  # half into the next window: half the burst's 3 hits still count
    assert [await conn.allow_publish() for _ in range(3)] == [True, True, False]


def test_a_window_slides_rather_than_resets(clock: Clock) -> None:
    counters = Counters()  # 4 per 2 s: windows [1000, 1002), [1002, 1004), ...
    assert [counters.hit("publish", 2, 4) for _ in range(5)] == [True] * 4 + [False]
    # Half into the next window, half the previous window's 4 hits still count: 2 more.
    clock.now += 3.0
    assert [counters.hit("publish", 2, 4) for _ in range(3)] == [True, True, False]
    # A quarter into the next, the previous window's 2 weigh 1.5, counted as 1: 3 more.
    clock.now += 1.5
    assert [counters.hit("publish", 2, 4) for _ in range(4)] == [True] * 3 + [False]
    # Two windows later nothing is remembered: the whole burst again.
    clock.now += 4.0
    assert [counters.hit("publish", 2, 4) for _ in range(5)] == [True] * 4 + [False]


def test_each_kind_has_its_own_window(clock: Clock) -> None:
    counters = Counters()
    assert [counters.hit("publish", 0.001, 1) for _ in range(2)] == [True, False]
    assert counters.hit("typing", 0.001, 1)
    assert counters.hit("strikes", 0.001, 1)


@override_settings(TYPING_RATE=0.001, TYPING_BURST=2.0)
async def test_typing_has_its_own_budget() -> None:
    conn = a_connection()
    assert [await conn.allow_typing() for _ in range(3)] == [True, True, False]
    assert await conn.allow_publish()


@override_settings(USER_PUBLISH_RATE=0.001, USER_PUBLISH_BURST=2.0)
async def test_without_redis_a_users_connections_here_share_one_budget() -> None:
    user = UserState("unit-shared")
    first, second = a_connection(user), a_connection(user)
    assert [await first.allow_publish(), await second.allow_publish()] == [True, True]
    assert not await first.allow_publish()
    assert not await second.allow_publish()


@override_settings(
    PUBLISH_RATE=0.001,
    PUBLISH_BURST=1.0,
    TYPING_RATE=0.001,
    TYPING_BURST=1.0,
    RATE_STRIKES=2.0,
    RATE_STRIKES_PER_SECOND=0.001,
)
async def test_the_refusal_after_the_last_strike_closes_the_connection() -> None:
    conn = a_connection()
    assert await conn.allow_publish()
    assert await conn.allow_typing()
    verdicts = []
    for allow in (conn.allow_publish, conn.allow_typing, conn.allow_publish):
        assert not await allow()
        verdicts.append(conn.strike())
    assert verdicts == [True, True, False]  # refusals of either kind count


async def test_an_idle_connection_keeps_no_counters() -> None:
    conn = a_connection()
    assert conn.own is None
    assert conn.user.own is None


async def test_counting_starts_no_task() -> None:
    before = len(asyncio.all_tasks())
    assert await a_connection().allow_publish()
    assert len(asyncio.all_tasks()) == before


async def test_a_closed_connection_leaves_no_counters_behind() -> None:
    user_id = f"unit-{uuid.uuid4().hex[:8]}"
    before = live_counters()
    user = await limits.connect(user_id)
    assert user is not None
    conn = ConnectionLimits(user)
    assert await conn.allow_publish()
    assert live_counters() == before + 2  # the connection's and the user's
    limits.disconnect(user_id)  # what the consumer does when its socket closes
    del conn, user
    assert user_id not in get_process().users
    assert live_counters() == before


def test_a_burst_is_counted_in_one_window_wherever_it_starts(clock: Clock) -> None:
    counters = Counters()  # 4 per 2 s, the window starting at the first hit
    clock.now = 1001.99  # just before an even second: windows on the clock would split here
    assert [counters.hit("publish", 2, 4) for _ in range(2)] == [True, True]
    clock.now = 1002.01
    assert [counters.hit("publish", 2, 4) for _ in range(3)] == [True, True, False]
