"""psycopg's connection pool: sized from the environment, and reads that hand connections back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections

from tests.settings_probe import settings_under
from web import actions
from web.access import aget_room_for_user, arooms_for_user

PG = "postgres://chat@db.example:5432/chat"


def test_the_pool_is_sized_from_the_environment_and_only_for_postgresql(tmp_path: Path) -> None:
    sized, default, off, old_names, sqlite, persistent = settings_under(
        {
            "DATABASE_URL": PG,
            "DATABASE_POOL_MIN_SIZE": "3",
            "DATABASE_POOL_MAX_SIZE": "7",
            "DATABASE_POOL_TIMEOUT": "2.5",
        },
        {"DATABASE_URL": PG},
        {"DATABASE_URL": PG, "DATABASE_POOL": "0"},
        {"DATABASE_URL": PG, "DATABASE_POOL_MIN": "4", "DATABASE_POOL_MAX": "4"},
        {},
        {"DATABASE_URL": PG + "?conn_max_age=60"},
        tmp_path=tmp_path,
    )
    db = sized["DATABASES"]["default"]
    assert db["OPTIONS"]["pool"] == {"min_size": 3, "max_size": 7, "timeout": 2.5}
    assert db["CONN_MAX_AGE"] == 0
    assert default["DATABASES"]["default"]["OPTIONS"]["pool"] == {
        "min_size": 2,
        "max_size": 10,
        "timeout": 5.0,
    }
    assert "pool" not in off["DATABASES"]["default"]["OPTIONS"]
    assert old_names["DATABASES"]["default"]["OPTIONS"]["pool"]["max_size"] == 4
    assert sqlite["DATABASES"]["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert "pool" not in sqlite["DATABASES"]["default"]["OPTIONS"]
    # Django would refuse it at the first query; the settings refuse it at start.
    assert persistent["error"].startswith("ImproperlyConfigured: conn_max_age must be 0")


def _close_this_threads_connection() -> None:
    connection.close()


def this_threads_pool() -> Any:
    postgresql: Any = connection  # the PostgreSQL backend's wrapper has the pool
    return postgresql.pool


def close_pool() -> None:
    postgresql: Any = connection
    postgresql.close_pool()  # and forgets it: a later test makes its own


@pytest.fixture
async def pool(transactional_db: None) -> AsyncIterator[Any]:
    """The default database through psycopg's pool, for this test (the test settings have none)."""
    close = sync_to_async(_close_this_threads_connection)  # the thread the access helpers use
    await close()
    options = connections["default"].settings_dict["OPTIONS"]
    # A fixed size, all open before the test: what is not available is checked out.
    options["pool"] = {"min_size": 2, "max_size": 2, "timeout": 5.0}
    try:
        pool = await sync_to_async(this_threads_pool)()
        pool.open()
        await sync_to_async(pool.wait)(timeout=10.0)
        yield pool
    finally:
        await close()
        await sync_to_async(close_pool)()
        del options["pool"]


def checked_out(pool: Any) -> int:
    stats = pool.get_stats()
    return int(stats["pool_size"] - stats["pool_available"])


def _holds_a_connection() -> bool:
    return connection.connection is not None


holds_a_connection = sync_to_async(_holds_a_connection)  # on the thread the helpers use


@pytest.mark.django_db(transaction=True)
async def test_a_read_hands_its_connection_back_to_the_pool(pool: Any, alice: Any) -> None:
    """So an async view or a socket awaiting the network afterwards holds no connection."""
    await sync_to_async(actions.do_create_room)(alice, "den", "Den", private=True)
    assert await holds_a_connection()  # an action's stays until its request ends
    out = checked_out(pool)
    rooms = await arooms_for_user(alice)
    assert "den" in [r["slug"] for r in rooms]
    assert not await holds_a_connection()
    assert checked_out(pool) == out - 1
    room = await aget_room_for_user(alice, "den")
    assert room.slug == "den"
    assert not await holds_a_connection()
    assert checked_out(pool) == out - 1
    assert pool.get_stats()["requests_num"] >= 2  # the reads did go through the pool
