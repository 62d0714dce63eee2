"""Flood control in one process: a connection's budgets and strikes, and the per-user budgets
this process counts itself without Redis (tests/test_cluster_limits.py has the Redis side)."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
import weakref
from typing import Any

from django.test import override_settings

from realtime import limits
from realtime.limits import ConnectionLimits, Counters, UserState
from realtime.process import get_process

# Tests of the connection's own budgets leave the user's out of the way.
ROOMY_USER: dict[str, Any] = {"USER_PUBLISH_RATE": 1000.0, "USER_PUBLISH_BURST": 1000.0}


def a_connection(user: UserState | None = None) -> ConnectionLimits:
    return ConnectionLimits(user or UserState(f"unit-{uuid.uuid4().hex[:8]}"))


def storage_of(counters: Counters) -> weakref.ref[object]:
    assert counters.limiter is not None, "nothing was counted"
    return weakref.ref(counters.limiter.storage)


async def away_from_a_second_boundary() -> None:
    """The package counts in wall-clock seconds: a burst straddling a 1 s window's edge
    would get into the next window and through. Never waits more than 0.1 s."""
    if time.time() % 1 > 0.9:
        await asyncio.sleep(1 - time.time() % 1)


@override_settings(PUBLISH_RATE=0.001, PUBLISH_BURST=3.0, **ROOMY_USER)
async def test_a_burst_is_allowed_then_refused() -> None:
    conn = a_connection()
    assert [await conn.allow_publish() for _ in range(4)] == [True, True, True, False]


@override_settings(PUBLISH_RATE=3.0, PUBLISH_BURST=3.0, **ROOMY_USER)
async def test_the_budget_comes_back_as_its_window_passes() -> None:
    conn = a_connection()  # 3 per 1 s
    await away_from_a_second_boundary()
    assert [await conn.allow_publish() for _ in range(4)] == [True, True, True, False]
    await asyncio.sleep(1.05)  # the package reads time.time(): no clock to advance instead
    assert await conn.allow_publish()


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
    assert conn.own.limiter is None
    assert conn.user.own.limiter is None


async def test_a_closed_connection_leaves_no_counters_behind() -> None:
    user_id = f"unit-{uuid.uuid4().hex[:8]}"
    user = await limits.connect(user_id)
    assert user is not None
    conn = ConnectionLimits(user)
    assert await conn.allow_publish()
    kept = [storage_of(conn.own), storage_of(user.own)]
    limits.disconnect(user_id)  # what the consumer does when its socket closes
    del conn, user
    await asyncio.sleep(0)  # the package's expiry sweep, a task, lets go of its storage
    gc.collect()
    assert user_id not in get_process().users
    assert [ref() for ref in kept] == [None, None]
