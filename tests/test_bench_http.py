"""bench.http_api, tiny: every configuration's wrk runs answer 2xx and count requests.

Keeps `make bench`'s HTTP scenario from rotting (it starts its own throwaway PostgreSQL,
Redis and uvicorn processes, and Debian's wrk from `make services`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_http_bench_runs_tiny(tmp_path: Path) -> None:
    out, table = tmp_path / "results.json", tmp_path / "benchmarks.md"
    table.write_text("# Benchmarks\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.http_api",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--concurrency",
            "4",
            "--users",
            "3",
            "--rooms",
            "2",
            "--configs",
            "off/off,on/on",
            "--json",
            str(out),
            "--append",
            str(table),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert list(results) == ["off/off", "on/on"]
    for endpoints in results.values():
        assert list(endpoints) == ["publish", "room list", "history"]
        for r in endpoints.values():
            assert r["requests"] > 0
            assert r["rps"] > 0
            assert r["errors"] == 0
            assert r["status_errors"] == 0
            assert 0 < r["p50_us"] <= r["p99_us"]
    text = table.read_text()
    assert "## HTTP API: the cache and the pool, off and on" in text
    assert text.count("| on | on |") == 3
    assert text.count("| off | off |") == 3
