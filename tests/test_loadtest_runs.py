"""chat-loadtest against the benchmark's bare server: it offers the rate asked for, and Ctrl-C
stops a run, which then reports what it saw (docs/loadtest.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.services import BIN, ROOT, wait_for_port
from cluster.procs import free_port
from loadtest.worker import PUBLISH_TICK_SECONDS


@pytest.fixture
def ceiling() -> Iterator[str]:
    """The benchmark's bare websockets server: enough of the protocol for chat-loadtest."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "baselines" / "ceiling.py"), "--port", str(port)]
    )
    wait_for_port(port, server, None)
    yield f"ws://127.0.0.1:{port}/"
    server.kill()
    server.wait()


def test_the_rate_is_kept_while_publishers_wake_once_per_tick(ceiling: str, tmp_path: Path) -> None:
    """At 2,000 msg/s a message falls due every 0.5 ms and the publishers wake every
    PUBLISH_TICK_SECONDS (2 ms): each wake sends all that fell due since the last."""
    assert PUBLISH_TICK_SECONDS > 1 / 2000  # several messages per wake
    report = tmp_path / "report.json"
    subprocess.run(
        [
            *(str(BIN / "chat-loadtest"), "--url", ceiling, "--rooms", "2"),
            *("--connections", "4", "--publishers", "2", "--rate", "2000", "--procs", "1"),
            *("--warmup", "1", "--duration", "2", "--max-seconds", "30"),
            *("--json", str(report), "--quiet"),
        ],
        stdout=subprocess.DEVNULL,
        timeout=60,
        check=True,
    )
    data = json.loads(report.read_text())
    assert data["ok"], data["problems"]
    # 3 s of publishing at 2,000 msg/s, less what fell due after the last wake.
    assert 2000 * 3 * 0.99 <= data["publish"]["sent"] <= 2000 * 3
    assert data["publish"]["acked"] == data["publish"]["sent"]


# Started as a non-interactive shell starts a background job (`make test &`, nohup): SIGINT
# ignored, which exec keeps.
SIGINT_IGNORED = ["sh", "-c", 'trap "" INT; exec "$0" "$@"']


def test_sigint_stops_the_run_even_when_started_with_sigint_ignored(
    ceiling: str, tmp_path: Path
) -> None:
    ready, report = tmp_path / "ready", tmp_path / "report.json"
    load = subprocess.Popen(
        [
            *SIGINT_IGNORED,
            *(str(BIN / "chat-loadtest"), "--url", ceiling, "--rooms", "1"),
            *("--connections", "2", "--publishers", "1", "--rate", "5", "--procs", "1"),
            *("--duration", "60", "--max-seconds", "70"),
            *("--ready-file", str(ready), "--json", str(report)),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert load.poll() is None, "chat-loadtest ended before it was ready"
            assert time.monotonic() < deadline, "chat-loadtest never got ready"
            time.sleep(0.05)
        load.send_signal(signal.SIGINT)
        load.wait(timeout=15)  # without the fix it runs on to --duration
    finally:
        load.kill()
        load.wait()
    assert json.loads(report.read_text())["aborted"] == "interrupted"
