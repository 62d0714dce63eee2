"""The database pools on /metrics (project/pool_metrics.py): psycopg_pool's statistics of the
store's pool on the event loop and of Django's, read when scraped, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from project import metrics
from realtime import publisher
from web import actions
from web.access import aget_room_for_user
from web.models import Membership, Room

pytestmark = pytest.mark.django_db(transaction=True)

STORE = "store-on-loop"


def sample(name: str, **labels: str) -> float | None:
    """One sample of /metrics' text, as Prometheus would read it."""
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


@override_settings(PUBLISH_IN_FLIGHT=1)
async def test_the_store_pool_shows_its_connections_and_who_waits(
    fresh_process: Any, alice: Any
) -> None:
    room = await Room.objects.acreate(slug="lobby", title="Lobby")
    await Membership.objects.acreate(user=alice, room=room)
    room = await aget_room_for_user(alice, "lobby")
    await publisher.publish(actions.Outgoing(alice, room, "hello", "c1", member=True))
    assert sample("chat_db_pool_max_connections", pool=STORE) == 1  # PUBLISH_IN_FLIGHT
    assert (sample("chat_db_pool_requests_total", pool=STORE) or 0) >= 1
    assert sample("chat_db_pool_waiting", pool=STORE) == 0

    pool = await fresh_process.database._opened()
    async with pool.connection():  # its one connection, held
        assert sample("chat_db_pool_connections", pool=STORE, state="in_use") == 1
        assert sample("chat_db_pool_connections", pool=STORE, state="idle") == 0

        async def another() -> None:
            async with pool.connection():
                pass

        waiter = asyncio.ensure_future(another())
        for _ in range(100):
            if sample("chat_db_pool_waiting", pool=STORE) == 1:
                break
            await asyncio.sleep(0.01)
        assert sample("chat_db_pool_waiting", pool=STORE) == 1
        await asyncio.sleep(0.05)
    await asyncio.wait_for(waiter, timeout=10)
    assert sample("chat_db_pool_waiting", pool=STORE) == 0
    assert (sample("chat_db_pool_queued_total", pool=STORE) or 0) >= 1
    assert (sample("chat_db_pool_wait_seconds_total", pool=STORE) or 0) >= 0.04


def test_a_django_pool_shows_under_its_alias() -> None:
    settings_dict = dict(connections["default"].settings_dict)
    settings_dict["OPTIONS"] = {**settings_dict["OPTIONS"], "pool": {"min_size": 1, "max_size": 2}}
    pooled = DatabaseWrapper(settings_dict, alias="pooled")
    assert sample("chat_db_pool_max_connections", pool="django:pooled") is None
    try:
        pooled.connect()  # a connection from the pool Django made for the alias
        assert sample("chat_db_pool_max_connections", pool="django:pooled") == 2
        assert sample("chat_db_pool_connections", pool="django:pooled", state="in_use") == 1
        assert (sample("chat_db_pool_requests_total", pool="django:pooled") or 0) >= 1
    finally:
        pooled.close()
        pooled.close_pool()  # type: ignore[attr-defined]  # Django 5.1+, not in the stubs
    assert sample("chat_db_pool_max_connections", pool="django:pooled") is None
