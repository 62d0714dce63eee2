"""Shared fixtures: throwaway PostgreSQL and Redis servers, and the users alice, bob and charlie.

Charlie belongs to nothing: he should have no access to Alice's private rooms.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from pytest_postgresql import factories as pg_factories
from pytest_redis import factories as redis_factories

from realtime import events

# PostgreSQL refuses to run as root; the wrapper runs it as the postgres user when needed.
postgresql_proc = pg_factories.postgresql_proc(
    port=None, executable=str(Path(__file__).parent / "bin" / "pg_ctl")
)
redis_proc = redis_factories.redis_proc(port=None)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(postgresql_proc: Any) -> None:
    from django.conf import settings

    settings.DATABASES["default"].update(
        HOST=postgresql_proc.host, PORT=str(postgresql_proc.port), USER=postgresql_proc.user
    )


def _user(username: str) -> Any:
    return get_user_model().objects.create_user(username, password=f"{username}-password")


@pytest.fixture
def alice(db: None) -> Any:
    return _user("alice")


@pytest.fixture
def bob(db: None) -> Any:
    return _user("bob")


@pytest.fixture
def charlie(db: None) -> Any:
    return _user("charlie")


class CapturedEvents(list[tuple[str, dict[str, Any]]]):
    """The (group, event) pairs actions broadcast."""


@pytest.fixture
def capture_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[CapturedEvents]:
    """Record every event an action broadcasts, still sending it through the real layer."""
    captured = CapturedEvents()
    real = events._group_send

    def recording(group: str, event: dict[str, Any]) -> None:
        captured.append((group, event))
        real(group, event)

    monkeypatch.setattr(events, "_group_send", recording)
    yield captured
