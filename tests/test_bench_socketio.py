"""The Socket.IO baseline and the generator's Socket.IO mode, tiny: every message arrives once.

Keeps `make bench`'s fourth target from rotting: a throwaway Redis, bench/baselines/socketio/
server.js on Node, and chat-loadtest speaking Socket.IO's wire protocol (loadtest/socketio.py)
with the same loss, duplicate and order accounting as for the other targets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.services import SOCKETIO, Server, wait_for_port
from cluster.procs import free_port
from loadtest.socketio import is_socketio

ROOT = Path(__file__).resolve().parent.parent


def test_it_tells_a_socketio_url_from_the_products() -> None:
    assert is_socketio("ws://127.0.0.1:8302/socket.io/?EIO=4&transport=websocket")
    assert not is_socketio("ws://127.0.0.1:8000/ws/")


@pytest.fixture
def socketio_server(tmp_path: Path) -> Iterator[Server]:
    if shutil.which("node") is None or not (SOCKETIO / "node_modules").is_dir():
        pytest.skip("needs Node and bench/baselines/socketio/node_modules (make bench)")
    redis_port, port = free_port(), free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        node = subprocess.Popen(
            ["node", str(SOCKETIO / "server.js"), "--host", "127.0.0.1", "--port", str(port)],
            env={
                "PATH": os.environ["PATH"],
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server("socketio", "socketio-0", port, node, log)
    try:
        wait_for_port(redis_port, redis, None)
        wait_for_port(port, node, log)
        yield server
    finally:
        server.stop()
        redis.kill()
        redis.wait()


@pytest.mark.e2e
def test_every_message_reaches_every_socketio_subscriber_once(
    socketio_server: Server, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "loadtest", "--url", socketio_server.url, "--quiet"),
            *("--connections", "20", "--publishers", "2", "--rate", "50", "--procs", "2"),
            *("--duration", "1", "--warmup", "0.5", "--drain", "2", "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["connections"]["ok"] == 22
    assert report["publish"]["acked"] == report["publish"]["sent"] > 0
    # Every subscriber of the one room got every message, in seq order, once.
    assert report["delivery"]["delivered"] == 20 * report["publish"]["sent"]
    assert report["correctness"] == report["correctness"] | {
        "lost": 0,
        "duplicated": 0,
        "out_of_order": 0,
    }
    assert report["delivery"]["latency_ms"]["p99"] is not None
