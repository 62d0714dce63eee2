"""RSS per idle websocket of a bare ASGI app under uvicorn: the floor under the product.

    python -m bench.memory [--ws websockets-sansio] [--connections 5000]

Serves bench/baselines/bare_asgi.py with the product's uvicorn flags (and the
`--ws` implementation given) and measures it the way `make bench` measures
scenario 2 (Bench.idle). Needs no Redis or PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.scenarios import FULL, Bench
from bench.services import ROOT, Services


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ws", default="websockets-sansio", help="uvicorn's --ws")
    parser.add_argument("--connections", type=int, default=FULL.idle.connections)
    args = parser.parse_args()
    results = ROOT / "bench" / "results" / f"memory-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    results.mkdir(parents=True)
    # Not started: the bare app needs neither Redis nor PostgreSQL.
    services = Services(Path(tempfile.mkdtemp(prefix="chat-memory-")), results, bare_ws=args.ws)
    tokens = services.tmp / "tokens.json"  # the bare app checks no token
    tokens.write_text(json.dumps({"tokens": ["-"] * args.connections, "rooms": ["r"] * 100}))
    plan = replace(FULL, idle=replace(FULL.idle, connections=args.connections))
    bench = Bench(services, tokens, results, plan)
    try:
        servers = services.start_servers("bare", 1)
        bench.warm_up(servers)
        outcome = bench.idle(servers)
        print(f"memory: bare ASGI app, uvicorn --ws {args.ws}: {outcome.detail}")
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
