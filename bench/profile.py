"""One target under one scenario-1 load, optionally sampled with py-spy.

    python -m bench.profile --rate 400 [--target product] [--duration 12] [--py-spy PATH]

Starts its own Redis and PostgreSQL (bench/services.py), one server process and
one `chat-loadtest` (by default 200 subscribers, 10 publishers, one room; scenario 3
is `--rooms 100 --connections 1000 --publishers 20`), and prints the
report's headline. With --py-spy it records the server for 5 seconds mid-run
(py-spy's raw format: one stack per line with its sample count) into
bench/results/. py-spy is not a dependency: point --py-spy at an installed one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.services import BIN, ROOT, Services


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, required=True, help="messages/s, all publishers")
    parser.add_argument("--target", default="product", choices=("floor", "product", "ceiling"))
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--rooms", type=int, default=1, help="100 for scenario 3's shape")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--publishers", type=int, default=10)
    parser.add_argument("--py-spy", help="path to a py-spy executable: sample the server")
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    results = ROOT / "bench" / "results" / f"profile-{stamp}"
    results.mkdir(parents=True)
    services = Services(Path(tempfile.mkdtemp(prefix="chat-profile-")), results)
    try:
        services.start()
        services.manage("migrate", "--noinput")
        tokens = services.tmp / "tokens.json"
        services.manage(
            *("provision_load", "--users", str(args.connections + args.publishers + 100)),
            *("--rooms", str(args.rooms), "--out", str(tokens)),
        )
        (server,) = services.start_servers(args.target, 1)
        report = results / "report.json"
        load = subprocess.Popen(
            [
                str(BIN / "chat-loadtest"),
                *("--url", server.url, "--tokens", str(tokens), "--rooms", str(args.rooms)),
                *("--connections", str(args.connections), "--publishers", str(args.publishers)),
                *("--rate", str(args.rate)),
                *("--duration", str(args.duration), "--warmup", "1", "--procs", "2"),
                *("--json", str(report), "--quiet"),
            ],
            stdout=subprocess.DEVNULL,
        )
        if args.py_spy:
            time.sleep(5)  # connected, warmed up, publishing
            out = results / f"py-spy-{args.target}-{args.rate:g}.txt"
            subprocess.run(
                [
                    *(args.py_spy, "record", "-p", str(server.pid), "-d", "5", "-r", "100"),
                    *("--nonblocking", "--format", "raw", "-o", str(out)),
                ],
                check=False,
                capture_output=True,
                timeout=60,
            )
            print(f"profile: {out}")
        load.wait(timeout=args.duration + 120)
        data = json.loads(report.read_text())
        latency = data["delivery"]["latency_ms"]
        print(
            f"profile: {args.target} at {args.rate:g} msg/s: "
            f"{data['delivery']['deliveries_per_s']:,.0f} deliveries/s, "
            f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, "
            f"acked {data['publish']['acked']}/{data['publish']['sent']}, "
            f"lost {data['correctness']['lost']}, problems {data['problems']}"
        )
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
