"""What project/settings.py makes of an environment, read in a subprocess (one for many cases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """
import importlib, json, os, sys
cases = json.load(sys.stdin)
base = dict(os.environ)
results = []
for env in cases:
    os.environ.clear()
    os.environ.update(base)
    os.environ.update(env)
    try:
        sys.modules.pop("project.settings", None)
        s = importlib.import_module("project.settings")
        results.append({"CACHES": s.CACHES, "DATABASES": s.DATABASES,
                        "SESSION_ENGINE": getattr(s, "SESSION_ENGINE", None)})
    except Exception as error:
        results.append({"error": f"{type(error).__name__}: {error}"})
print(json.dumps(results, default=str))
"""

# Set by the caller's shell or CI: never let them leak into a case.
CLEARED = ["DATABASE_URL", "REDIS_URL", "CACHE_URL", "DATABASE_POOL", "DJANGO_SETTINGS_MODULE"]


def settings_under(*cases: dict[str, str], tmp_path: Path) -> list[dict[str, Any]]:
    """project.settings' CACHES, DATABASES and SESSION_ENGINE under each environment."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED and not k.endswith("_FILE")}
    env.update(SQLITE_PATH=str(tmp_path / "db.sqlite3"), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        env=env,
        input=json.dumps(list(cases)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results
