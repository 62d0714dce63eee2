"""psycopg's connection pool, sized from the environment."""

from __future__ import annotations

from pathlib import Path

from tests.settings_probe import settings_under

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
