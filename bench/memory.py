"""RSS per idle websocket of a bare ASGI app under uvicorn: the floor under the product.

    python -m bench.memory [--ws websockets-sansio] [--connections 5000]

Serves bench/baselines/bare_asgi.py with the product's uvicorn flags (and the
`--ws` implementation given), opens N subscribed connections with
`chat-loadtest` as scenario 2 does, and prints the server's RSS growth per
connection. Needs no Redis or PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench.services import BIN, ROOT, UVICORN_ARGS, free_port, rss_kb, wait_for_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ws", default="websockets-sansio", help="uvicorn's --ws")
    parser.add_argument("--connections", type=int, default=5000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chat-memory-"))
    tokens = tmp / "tokens.json"  # the bare app checks no token
    tokens.write_text(json.dumps({"tokens": ["-"] * args.connections, "rooms": ["r"] * 100}))
    port = free_port()
    log = tmp / "server.log"
    server = subprocess.Popen(
        [
            *(str(BIN / "uvicorn"), "bench.baselines.bare_asgi:app", *UVICORN_ARGS),
            *("--ws", args.ws, "--host", "127.0.0.1", "--port", str(port)),
        ],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, server, log)
        url = f"ws://127.0.0.1:{port}/ws/"
        common = ("--url", url, "--tokens", str(tokens), "--publishers", "0", "--rate", "0")
        # Warm up as the benchmark does, then measure the growth while N sockets are open.
        subprocess.run(
            [
                str(BIN / "chat-loadtest"),
                *common,
                "--connections",
                "20",
                "--duration",
                "1",
                "--quiet",
            ],
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=60,
        )
        time.sleep(1)
        before = rss_kb(server.pid)
        ready, report = tmp / "ready", tmp / "report.json"
        load = subprocess.Popen(
            [
                *(str(BIN / "chat-loadtest"), *common, "--connections", str(args.connections)),
                *("--duration", "6", "--connect-rate", "500", "--max-pending", "100"),
                *("--ready-file", str(ready), "--json", str(report), "--quiet"),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + args.connections / 500 + 120
        while not ready.exists() and load.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        after = rss_kb(server.pid)
        load.wait(timeout=120)
        ok = json.loads(report.read_text())["connections"]["ok"]
        print(
            f"memory: bare ASGI app, uvicorn --ws {args.ws}: "
            f"{(after - before) / max(ok, 1):.1f} KB/conn "
            f"({before / 1024:.0f} -> {after / 1024:.0f} MB, {ok} connections)"
        )
    finally:
        server.kill()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
