"""Development profiling: django-debug-toolbar under project/settings_dev.py only, and
DEBUG_SQL=1 logging every query with its time (docs/data.md, "Profiling").

Each check runs a fresh Python process: what a process imports, and how Django starts up
with given settings, cannot be seen from inside this test run's own Django.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(code: str, tmp_path: Path, settings: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CACHE_URL", "DEBUG", "DEBUG_SQL"}
    }
    environ.update(
        DJANGO_SETTINGS_MODULE=settings,
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        ALLOWED_HOSTS="testserver",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


LOADED = """
import sys, django
django.setup()
import project.urls, project.asgi
print(sorted(m for m in sys.modules if m.split(".")[0] == "debug_toolbar")[:1])
"""


def test_production_settings_never_load_the_toolbar(tmp_path: Path) -> None:
    done = run(LOADED, tmp_path, "project.settings", DEBUG="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_dev_settings_load_it(tmp_path: Path) -> None:
    done = run(LOADED, tmp_path, "project.settings_dev", DEBUG="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['debug_toolbar']"


def test_the_toolbar_shows_on_a_page_over_asgi_under_the_production_csp(tmp_path: Path) -> None:
    code = """
import asyncio, json, django
django.setup()
from django.test import AsyncClient

async def main():
    response = await AsyncClient().get("/accounts/login/")
    print(json.dumps([response.status_code, "djDebug" in response.content.decode(),
                      response.headers["Content-Security-Policy"]]))

asyncio.run(main())
"""
    done = run(code, tmp_path, "project.settings_dev", DEBUG="1", LOG_LEVEL="WARNING")
    assert done.returncode == 0, done.stderr
    status, shown, policy = json.loads(done.stdout.splitlines()[-1])
    assert (status, shown) == (200, True)
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"


QUERY = """
import django
django.setup()
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("SELECT %s AS probe_column", ["a-parameter-value"])
"""


def sql_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "project.sql"]


def test_debug_sql_logs_each_query_with_its_time(tmp_path: Path) -> None:
    done = run(QUERY, tmp_path, "project.settings", DEBUG_SQL="1", LOG_FORMAT="json")
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in sql_lines(done.stderr) if "probe_column" in x["sql"]]
    assert line["event"] == "sql"
    assert line["sql"] == "SELECT %s AS probe_column"
    assert isinstance(line["duration_ms"], float)
    assert line["alias"] == "default"
    # Parameters may be password or token hashes: never logged.
    assert "a-parameter-value" not in done.stderr


def test_without_debug_sql_no_query_is_logged(tmp_path: Path) -> None:
    done = run(QUERY, tmp_path, "project.settings", LOG_FORMAT="json")
    assert done.returncode == 0, done.stderr
    assert sql_lines(done.stderr) == []
    assert "probe_column" not in done.stderr
