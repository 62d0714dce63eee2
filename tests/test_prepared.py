"""The message store's statement is prepared once per connection (web/models/prepared.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import django.db.utils
import pytest
from django.db import connection
from django.test import override_settings

from tests.settings_probe import settings_under
from web.models import Draft, Message, Room
from web.models.prepared import prepared_cursor
from web.models.store_statement import store_batch_sql

pytestmark = pytest.mark.django_db


def _prepared_stores() -> list[str]:
    """The store statements this session has prepared."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall() if "WITH given AS" in row[0]]


def test_the_store_statement_is_prepared_once_and_reused(alice: Any) -> None:
    room = Room.objects.create(slug="den", title="Den")
    before = _prepared_stores()
    Message.objects.store_batch([Draft(room.pk, alice.pk, "one", "c-1")])
    prepared = _prepared_stores()
    assert len(prepared) == len(before) + 1, prepared
    assert "$1" in prepared[-1]  # bound on the server: one text for every batch
    stored = Message.objects.store_batch([Draft(room.pk, alice.pk, "two", "c-2")])
    assert _prepared_stores() == prepared  # the same statement, run again
    assert [(s[0].seq, s[0].body) for s in stored if isinstance(s, tuple)] == [(2, "two")]


def test_a_large_batch_runs_the_same_statement(alice: Any) -> None:
    room = Room.objects.create(slug="den", title="Den")
    Message.objects.store_batch([Draft(room.pk, alice.pk, "one", "c-one")])
    prepared = _prepared_stores()
    drafts = [Draft(room.pk, alice.pk, f"m{n}", f"c-{n}") for n in range(40)]
    stored = Message.objects.store_batch(drafts)
    assert _prepared_stores() == prepared
    assert [s[0].seq for s in stored if isinstance(s, tuple)] == list(range(2, len(drafts) + 2))


def _scans(plan: dict[str, Any], table: str) -> list[str]:
    """The node types that read `table` in an EXPLAIN (FORMAT JSON) plan (not its writes)."""
    reads = plan.get("Relation Name") == table and plan["Node Type"] != "ModifyTable"
    found = [plan["Node Type"]] if reads else []
    for child in plan.get("Plans", []):
        found += _scans(child, table)
    return found


def test_its_plan_reads_messages_by_key_however_the_table_grew(alice: Any) -> None:
    # One generic plan serves every batch; made while web_message was new, a plan that joined
    # it hashed the whole table at every batch once it had grown (until the next ANALYZE).
    room = Room.objects.create(slug="den", title="Den")
    sql = store_batch_sql()
    for n, name in enumerate(["rooms", "senders", "bodies", "ids"], start=1):
        sql = sql.replace(f"%({name})s", f"${n}")
    args = f"'{{{room.pk}}}', '{{{alice.pk}}}', '{{hi}}'"
    with connection.cursor() as cursor:
        # A new web_message of this test's own, never analysed (it hides the real one).
        cursor.execute("CREATE TEMP TABLE web_message (LIKE web_message INCLUDING ALL)")
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE store_plan_test(bigint[], bigint[], text[], text[]) AS {sql}")
        try:
            cursor.execute(f"EXECUTE store_plan_test({args}, '{{c-0}}')")  # the plan is made
            cursor.execute(
                "INSERT INTO web_message (room_id, seq, sender_id, body, client_msg_id,"
                " created_at) SELECT %s, n, %s, 'x', 'c-' || n, now()"
                " FROM generate_series(2, 5001) n",
                [room.pk, alice.pk],
            )
            cursor.execute(f"EXPLAIN (FORMAT JSON) EXECUTE store_plan_test({args}, '{{c-x}}')")
            (explained,) = cursor.fetchone()
        finally:
            cursor.execute("DEALLOCATE store_plan_test")
    plan = (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]
    assert _scans(plan, "web_message") == ["Index Scan"], json.dumps(plan, indent=1)


def test_connections_keep_one_plan_for_prepared_statements(tmp_path: Path) -> None:
    url = "postgres://chat@db.example:5432/chat"
    on, off = settings_under(
        {"DATABASE_URL": url},
        {"DATABASE_URL": url, "DATABASE_PREPARED_STATEMENTS": "0"},
        tmp_path=tmp_path,
    )
    options = on["DATABASES"]["default"]["OPTIONS"]["options"]
    assert "-c plan_cache_mode=force_generic_plan" in options
    assert "plan_cache_mode" not in off["DATABASES"]["default"]["OPTIONS"]["options"]
    with connection.cursor() as cursor:  # the tests' connections as well
        cursor.execute("SHOW plan_cache_mode")
        assert cursor.fetchone() == ("force_generic_plan",)


@override_settings(DATABASE_PREPARED_STATEMENTS=False)
def test_the_setting_turns_it_off(alice: Any) -> None:
    room = Room.objects.create(slug="den", title="Den")
    before = _prepared_stores()
    stored = Message.objects.store_batch([Draft(room.pk, alice.pk, "one", "c-1")])
    assert _prepared_stores() == before
    assert [s[0].body for s in stored if isinstance(s, tuple)] == ["one"]


def test_its_errors_are_djangos() -> None:
    # Django's translation keeps store_batch's `except IntegrityError` retry working.
    with pytest.raises(django.db.utils.ProgrammingError), prepared_cursor() as cursor:
        cursor.execute("SELECT no_such_column FROM web_room")


@pytest.mark.django_db(transaction=True)
def test_a_migration_changing_a_returned_column_does_not_wedge_the_store(alice: Any) -> None:
    # A rolling deploy's migration may change a column the statement returns while pods
    # hold it prepared: PostgreSQL plans it again (a statement prepared with SQL's PREPARE
    # would fail with "cached plan must not change result type" instead).
    room = Room.objects.create(slug="den", title="Den")
    Message.objects.store_batch([Draft(room.pk, alice.pk, "one", "c-1")])
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE web_message ALTER COLUMN body TYPE varchar(4000)")
    try:
        stored = Message.objects.store_batch([Draft(room.pk, alice.pk, "two", "c-2")])
        assert [(s[0].seq, s[0].body) for s in stored if isinstance(s, tuple)] == [(2, "two")]
        assert len(_prepared_stores()) == 1
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE web_message ALTER COLUMN body TYPE text")
