"""bench.cpu and the bench's PostgreSQL: CPU per delivery is counted, and commits are durable.

The CPU columns of docs/benchmarks.md and docs/performance.md come from here; the storing
path they price must be the one production runs (fsync and synchronous_commit on).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.cpu import CpuMeter, cpu_seconds, measure_window, others_cores, us_per_delivery
from bench.services import Services

SPIN = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass"


def test_it_counts_a_busy_child_of_the_tree_and_not_an_idle_one(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {SPIN!r}])",
        ]
    )
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    ready = tmp_path / "ready"
    ready.touch()
    try:
        meter = CpuMeter({"busy": [parent.pid], "idle": [idle.pid]})
        used = measure_window(meter, ready, parent, skip_s=0.5, window_s=1.0)
    finally:
        parent.kill()
        idle.kill()
        parent.wait()
        idle.wait()
    assert 0.7 < used["busy"] <= used["window_s"] + 0.05  # the spinning grandchild, one core
    assert used["idle"] < 0.05
    # The machine was at least as busy as the spinner; what else ran is "others".
    assert used["machine"] >= used["busy"] - 0.05
    others = others_cores(used)
    assert others is not None
    assert others >= 0.0
    assert cpu_seconds(parent.pid) == 0.0  # gone: nothing to read


def test_it_divides_by_the_deliveries_of_the_window() -> None:
    cpu = {"server": 0.5, "postgres": 0.25, "redis": 0.05, "window_s": 2.0}
    assert us_per_delivery(cpu, ["server"], 25_000) == pytest.approx(10.0)
    assert us_per_delivery(cpu, ["postgres", "redis"], 25_000) == pytest.approx(6.0)
    assert us_per_delivery({}, ["server"], 25_000) is None  # the generator ended early
    assert us_per_delivery(cpu, ["server"], 0) is None


@pytest.mark.e2e
def test_the_benchs_postgres_commits_durably(tmp_path: Path) -> None:
    services = Services(tmp_path / "run", tmp_path)
    services.tmp.mkdir()
    try:
        services.start()
        settings = services.pg_settings()
        assert settings["fsync"] == "on"
        assert settings["synchronous_commit"] == "on"
        used = services.cpu_meter([]).read()  # the postmaster and Redis are found
        assert set(used) == {"server", "postgres", "redis", "generator"}
        assert cpu_seconds(services.pg_pid) > 0
    finally:
        services.stop()


def test_a_child_that_exits_inside_the_window_counts_what_it_used(tmp_path: Path) -> None:
    brief = SPIN.replace("+ 3", "+ 0.8")  # the generator's workers exit when publishing ends
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {brief!r}]);"
            " time.sleep(3)",
        ]
    )
    ready = tmp_path / "ready"
    ready.touch()
    try:
        used = measure_window(CpuMeter({"tree": [parent.pid]}), ready, parent, 0.1, 1.5)
    finally:
        parent.kill()
        parent.wait()
    assert used["tree"] > 0.5
