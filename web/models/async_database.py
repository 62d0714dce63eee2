"""The default database through psycopg's asyncio driver: the message store on the event loop.

At low rates every publish is a batch of its own. Stored on a thread, each paid for the hop
there and back, the GIL at each end of its round trip and Django's cursor: 560 us of CPU a
one-message batch against 180 us for the same statement awaited on the event loop
(docs/performance.md). The statements run here are committed on their own, one per
checkout. The pool is psycopg_pool's, with the connection parameters, adapters (time zone),
session options (statement_timeout, the generic plans) and pool timeout of Django's own
DATABASES["default"], and PUBLISH_IN_FLIGHT connections at most; it is made on first use on
the running event loop, and again if a later use is on another loop (tests that run their
own).
"""

from __future__ import annotations

import asyncio
from typing import Any
from weakref import WeakKeyDictionary

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import DatabaseErrorWrapper
from psycopg import AsyncConnection, AsyncCursor
from psycopg_pool import AsyncConnectionPool

from project import pool_metrics
from web.models.prepared import BY_COUNT_NEVER

Row = tuple[Any, ...]
APPLICATION_NAME = "chat-store-on-loop"


class AsyncDatabase:
    """One process's pool of async connections to the default database, made when needed."""

    def __init__(self) -> None:
        self._pool: AsyncConnectionPool[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Looked up once: on the event loop each task has its own `connections`, and the
        # first look in a task makes a DatabaseWrapper (60 us of a one-message batch).
        self._postgresql: bool | None = None
        self._errors: DatabaseErrorWrapper | None = None
        self._cursors: WeakKeyDictionary[AsyncConnection[Any], AsyncCursor[Any]] = (
            WeakKeyDictionary()
        )

    def usable(self) -> bool:
        """Whether statements may run here: PostgreSQL, and STORE_ON_EVENT_LOOP on."""
        if self._postgresql is None:
            self._postgresql = connections[DEFAULT_DB_ALIAS].vendor == "postgresql"
        return self._postgresql and bool(settings.STORE_ON_EVENT_LOOP)

    async def fetchall(self, query: str, params: dict[str, Any]) -> list[Row]:
        """Run one statement (committed by itself) and return its rows. psycopg's errors are
        raised as Django's (OperationalError, IntegrityError, ...), as a cursor would."""
        pool = await self._opened()
        assert self._errors is not None  # noqa: S101 -- made with the pool
        with self._errors:
            async with pool.connection() as conn:
                # One cursor per connection, kept: a new one each time cost 30 us of the
                # statement's 150 (psycopg's adapters set up again).
                cursor = self._cursors.get(conn)
                if cursor is None:
                    cursor = self._cursors[conn] = conn.cursor()
                # Prepared once per connection, as on the threads (web/models/prepared.py).
                await cursor.execute(query, params, prepare=settings.DATABASE_PREPARED_STATEMENTS)
                rows: list[Row] = await cursor.fetchall()
                return rows

    async def aclose(self) -> None:
        """Close the pool if it belongs to the running loop; forget it either way."""
        pool, loop, self._pool, self._loop = self._pool, self._loop, None, None
        if pool is not None and loop is asyncio.get_running_loop():
            await pool.close()

    async def _opened(self) -> AsyncConnectionPool[Any]:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._loop is not loop:
            wrapper = connections[DEFAULT_DB_ALIAS]
            params = wrapper.get_connection_params()
            params.pop("cursor_factory", None)  # Django's sync cursor class
            params["autocommit"] = True
            # Told apart in pg_stat_activity, unless the operator named the connections.
            params.setdefault("application_name", APPLICATION_NAME)
            if settings.DATABASE_PREPARED_STATEMENTS:
                # As in prepared.py: psycopg prepares only when asked (prepare=True).
                params["prepare_threshold"] = BY_COUNT_NEVER
            pool_options = wrapper.settings_dict["OPTIONS"].get("pool") or {}
            timeout = pool_options.get("timeout", 5.0) if isinstance(pool_options, dict) else 5.0

            async def configure(conn: AsyncConnection[Any]) -> None:
                # What Django's backend does to a new connection: its time zone and role.
                timezone = wrapper.timezone_name
                if timezone and conn.info.parameter_status("TimeZone") != timezone:
                    await conn.execute("SELECT set_config('TimeZone', %s, false)", [timezone])
                if role := wrapper.settings_dict["OPTIONS"].get("assume_role"):
                    await conn.execute("SELECT set_config('role', %s, false)", [role])

            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                kwargs=params,
                min_size=0,
                max_size=max(1, settings.PUBLISH_IN_FLIGHT),
                timeout=timeout,
                configure=configure,
                check=(
                    AsyncConnectionPool.check_connection
                    if wrapper.settings_dict.get("CONN_HEALTH_CHECKS")
                    else None
                ),
                name="store-on-loop",
                open=False,
            )
            await pool.open(wait=False)
            pool_metrics.watch(pool)  # on /metrics while it lives
            self._pool, self._loop = pool, loop
            # Django's mapping of psycopg's errors to its own; it uses no connection.
            self._errors = wrapper.wrap_database_errors
        return self._pool
