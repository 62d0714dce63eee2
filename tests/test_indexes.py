"""docs/data.md lists every index of the app's tables, and only those: the doc cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.db import connection

DOC = Path(__file__).resolve().parent.parent / "docs" / "data.md"


def section() -> str:
    text = DOC.read_text()
    start = text.index("\n## Indexes\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def schema_indexes() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes"
            " WHERE schemaname = 'public' AND tablename LIKE 'web\\_%%'"
        )
        return {name for (name,) in cursor.fetchall()}


@pytest.mark.django_db
def test_each_documented_index_exists_and_each_index_is_documented() -> None:
    documented = set(re.findall(r"^#### `([a-z0-9_]+)`", section(), flags=re.MULTILINE))
    indexes = schema_indexes()
    assert documented - indexes == set(), "documented but not in the schema"
    # Primary keys are documented where a plan shows one; every other index must be.
    assert {i for i in indexes if not i.endswith("_pkey")} - documented == set()


@pytest.mark.django_db
def test_the_dropped_indexes_are_gone() -> None:
    lines = re.findall(r"^- dropped: (.*)$", section(), flags=re.MULTILINE)
    dropped = {name for line in lines for name in re.findall(r"`([a-z0-9_]+)`", line)}
    assert len(dropped) == 7
    assert dropped & schema_indexes() == set()
