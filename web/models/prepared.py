"""Statements PostgreSQL plans once per connection, not at every execution.

Django's PostgreSQL backend binds parameters on the client by default (psycopg's
ClientCursor): the values are written into the statement's text, so no two executions
share a text and PostgreSQL parses and plans each one afresh. For the message store's
statement (web/models: a CTE of a dozen parts) parsing and planning are most of the
database's work when a batch holds few publishes: prepared, a one-message batch took
0.33 ms of PostgreSQL's CPU instead of 1.09-1.26 ms on this project's machine
(docs/performance.md).

Every batch, whatever its size, runs one generic plan: the statement reads web_message by
key (web/models), so the plan does not depend on how large the table was when it was made,
and the settings start each connection with plan_cache_mode=force_generic_plan.
Left to choose, PostgreSQL planned this statement afresh at every execution (a custom plan:
it thinks an array parameter holds 10 elements, so the generic plan looked dearer than one
made for a batch of one), which cost 460 us of its CPU a batch against 170.

`prepared_cursor()` gives a Django cursor (error translation, execute wrappers) over a
psycopg cursor that binds on the server and prepares the statement on its first use on
each pooled connection; later executions only bind and run. psycopg keys what it prepared
by the statement's text and parameter types, and keeps at most `prepared_max` per
connection. DATABASE_PREPARED_STATEMENTS=0 turns it off: a pooler that does not keep
prepared statements (PgBouncer in transaction mode before 1.21, or without
max_prepared_statements) would lose them between transactions.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.conf import settings
from django.db import connection
from django.db.backends.utils import CursorWrapper

BY_COUNT_NEVER = 2**31 - 1


class _PreparingCursor(psycopg.Cursor[Any]):
    """Server-side binding, and every execution prepared (psycopg reuses what it has)."""

    def execute(  # only the plain (query, params) form is used
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> _PreparingCursor:
        super().execute(query, params, prepare=True, binary=binary)
        return self


def prepared_cursor() -> CursorWrapper:
    """A cursor on the default connection for the store's statement (see the module's doc);
    a plain Django cursor when the setting is off, or when the database is not PostgreSQL."""
    if not settings.DATABASE_PREPARED_STATEMENTS or connection.vendor != "postgresql":
        return connection.cursor()
    # Django's own cursor (its connection checks, its wrapper, debug logging when on), with
    # the psycopg cursor under it swapped for a preparing one.
    wrapper = connection.cursor()
    conn = connection.connection
    if conn.prepare_threshold is None:
        # Django turns psycopg's preparing off unless OPTIONS asks for it, and with it
        # prepare=True. A count no other statement reaches: only this cursor's prepare.
        conn.prepare_threshold = BY_COUNT_NEVER
    wrapper.cursor.close()  # client-side only: nothing sent to the server
    wrapper.cursor = _PreparingCursor(conn)
    return wrapper
