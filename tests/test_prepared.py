"""The message store's statement is prepared once per connection (web/models/prepared.py)."""

from __future__ import annotations

from typing import Any

import django.db.utils
import pytest
from django.db import connection
from django.test import override_settings

from web.models import Draft, Message, Room
from web.models.prepared import PREPARED_BATCH_MAX, prepared_cursor

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


def test_a_large_batch_gets_a_plan_of_its_own(alice: Any) -> None:
    room = Room.objects.create(slug="den", title="Den")
    before = _prepared_stores()
    drafts = [Draft(room.pk, alice.pk, f"m{n}", f"c-{n}") for n in range(PREPARED_BATCH_MAX + 1)]
    stored = Message.objects.store_batch(drafts)
    assert _prepared_stores() == before
    assert [s[0].seq for s in stored if isinstance(s, tuple)] == list(range(1, len(drafts) + 1))


@override_settings(DATABASE_PREPARED_STATEMENTS=False)
def test_the_setting_turns_it_off(alice: Any) -> None:
    room = Room.objects.create(slug="den", title="Den")
    before = _prepared_stores()
    stored = Message.objects.store_batch([Draft(room.pk, alice.pk, "one", "c-1")])
    assert _prepared_stores() == before
    assert [s[0].body for s in stored if isinstance(s, tuple)] == ["one"]


def test_its_errors_are_djangos() -> None:
    # Django's translation keeps store_batch's `except IntegrityError` retry working.
    with pytest.raises(django.db.utils.ProgrammingError), prepared_cursor(1) as cursor:
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
