"""bench.storage, quick: the storing path's figures come out positive and durable.

Keeps the numbers docs/scaling.md quotes from rotting: the script starts its own throwaway
PostgreSQL (fsync on), stores through Message.objects.store_batch and reads a history page.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_storage_bench_runs_quick(tmp_path: Path) -> None:
    out = tmp_path / "storage.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.storage", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["settings"]["fsync"] == "on"
    assert result["settings"]["synchronous_commit"] == "on"
    cells = {(w["batch"], w["writers"]): w for w in result["writes"]}
    assert set(cells) == {(b, n) for b in (1, 10, 100) for n in (1, 4)}
    for cell in cells.values():
        assert cell["per_second"] > 0
        assert cell["cpu_s_per_1000"] > 0  # the backends' CPU was read before they closed
        assert cell["wal_bytes_per_message"] > 100
    # Batching is the point of the statement: ten per commit store more per second than one.
    assert cells[(10, 1)]["per_second"] > cells[(1, 1)]["per_second"]
    assert result["stored"]["bytes_per_message"] > 100
    small, large = result["reads"]
    assert large["rows"] > small["rows"]
    assert "message_room_seq_uniq" in large["plan"]
    assert "| batch | writers | messages/s" in done.stdout
