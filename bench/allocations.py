"""Where an idle connection's memory goes: Python allocations per connection, by line.

    python -m bench.allocations [--target product|bare] [--connections 1000] [--top 25]

Serves the target under tracemalloc (bench/traced.py) over throwaway Redis and
PostgreSQL, takes a snapshot, opens N idle subscribed connections the way
scenario 2 does (slower: tracing makes the server slower), takes another, and
prints the difference per connection: by file, then by line. Python's own
allocations only; RSS (scenario 2, bench/memory.py) also counts uvloop's and the
allocator's share.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
import tracemalloc
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.scenarios import FULL, Bench
from bench.services import ROOT, Server, Services


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="product", choices=("product", "bare"))
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    results = ROOT / "bench" / "results" / f"allocations-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    results.mkdir(parents=True)
    services = Services(Path(tempfile.mkdtemp(prefix="chat-alloc-")), results, snapshots=results)
    try:
        tokens = services.tmp / "tokens.json"
        if args.target == "product":
            services.start()
            services.manage("migrate", "--noinput")
            services.manage(
                *("provision_load", "--users", str(args.connections + 100)),
                *("--rooms", "100", "--out", str(tokens)),
            )
        else:  # the bare app checks no token and needs no services
            tokens.write_text(json.dumps({"tokens": ["-"] * args.connections, "rooms": ["r"]}))
        # A traced server is slow (about 20 handshakes a second here): connect gently.
        load = replace(FULL.idle, connections=args.connections, connect_rate=20, max_pending=20)
        bench = Bench(services, tokens, results, replace(FULL, idle=load))
        (server,) = services.start_servers(args.target, 1)
        bench.warm_up([server])
        before = _snapshot(server, results, 0)
        ready = results / "idle.ready"
        proc = bench.loadtest("idle", server.url, load, 0, ready_file=ready)
        deadline = time.monotonic() + load.connections / load.connect_rate + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        after = _snapshot(server, results, 1)
        run = bench.finish("idle", proc, 0)
        _report(before, after, run.report["connections"]["ok"], args.top)
    finally:
        services.stop()
    return 0


def _snapshot(server: Server, folder: Path, n: int) -> tracemalloc.Snapshot:
    path = folder / f"snapshot-{n}.bin"
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(1)  # the dump takes a while; load it once it has stopped growing
        if path.exists() and path.stat().st_size and _settled(path):
            return tracemalloc.Snapshot.load(str(path))
    raise RuntimeError(f"no snapshot {path}")


def _settled(path: Path) -> bool:
    size = path.stat().st_size
    time.sleep(0.5)
    return path.stat().st_size == size


def _report(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, conns: int, top: int
) -> None:
    n = max(conns, 1)
    mine = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(mine), after.filter_traces(mine)
    by_file = after.compare_to(before, "filename")
    total = sum(stat.size_diff for stat in by_file)
    print(f"allocations: {total / n / 1024:.2f} KB per connection ({conns} connections)")
    for key, stats in (("file", by_file), ("line", after.compare_to(before, "lineno"))):
        print(f"\nby {key}:")
        for stat in stats[:top]:
            frame = stat.traceback[0]
            where = _short(frame.filename) + ("" if key == "file" else f":{frame.lineno}")
            print(f"  {stat.size_diff / n:7.0f} B  {stat.count_diff / n:5.1f} objects  {where}")


def _short(filename: str) -> str:
    for marker in ("site-packages/", "python3.11/", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


if __name__ == "__main__":
    raise SystemExit(main())
