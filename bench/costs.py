"""What one scenario-1 step costs a target, per message and per delivery (docs/performance.md).

    python -m bench.costs --rate 500 [--target product] [--duration 20] [--py-spy .venv/bin/py-spy]
    python -m bench.costs --rate 1600 --rooms 100 --connections 1000 --publishers 20   # scenario 3

Starts its own Redis and PostgreSQL (durable, as bench/services.py runs them) and one
server, drives it with chat-loadtest as scenario 1 does (200 subscribers, 10 publishers,
one room; other shapes with --rooms, --connections, --publishers), and over the measured
window reads: the CPU of the server, PostgreSQL and Redis (bench/cpu.py); PostgreSQL's
commits, WAL records, WAL writes, fsyncs and their time (pg_stat_database, pg_stat_wal)
and each statement's calls and execution time (pg_stat_statements); Redis' commands by
name (INFO commandstats); the server's read and write system calls per delivery
(/proc/<pid>/io) and, for the product, its garbage collector's pauses, its publish
batches (how many, their publishes and milliseconds) and the mean time from a commit to
its fan-out (its /metrics, read over HTTP at the window's edges: with thousands of
sockets, collections of their closing right after the window may be counted). With
--py-spy it samples the server over the same window and lists the frames with the most
self time, as shares of the samples and as microseconds per delivery.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.cpu import measure_window, others_cores, wait_for_quiet
from bench.services import BIN, ROOT, Services
from loadtest.coordinator import START_DELAY_S

PG_COUNTERS = """
    SELECT d.xact_commit, d.tup_inserted, d.tup_updated, w.wal_records, w.wal_fpi,
           w.wal_bytes, w.wal_write, w.wal_sync, w.wal_sync_time
    FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = 'chat'
"""

# Statements by text, all of them (pg_stat_statements, loaded for this run only).
STATEMENTS = """
    SELECT query, calls, total_exec_time FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'chat')
"""
PG_NAMES = (
    "commits",
    "rows_inserted",
    "rows_updated",
    "wal_records",
    "wal_full_pages",
    "wal_bytes",
    "wal_writes",
    "wal_fsyncs",
    "wal_fsync_ms",  # with track_wal_io_timing, on for this run
)


def pg_counters(port: int) -> tuple[dict[str, float], Counter[str]]:
    """Commits, rows and WAL so far; calls so far per statement, and its milliseconds as
    "<statement> ms"."""
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="chat") as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(PG_COUNTERS).fetchone()
        calls: Counter[str] = Counter()
        for query, n, ms in conn.execute(STATEMENTS):
            text = " ".join(str(query).split())[:120]
            calls[text], calls[f"{text} ms"] = int(n), round(float(ms))
    assert row is not None  # noqa: S101 -- the database exists
    return {name: float(value) for name, value in zip(PG_NAMES, row, strict=True)}, calls


def statements(before: Counter[str], after: Counter[str], messages: float) -> dict[str, float]:
    """The dozen statements called most over the window, per message and per call."""
    calls = after - before
    found: dict[str, float] = {}
    for query, n in Counter({q: n for q, n in calls.items() if not q.endswith(" ms")}).most_common(
        12
    ):
        if messages and "pg_stat" not in query:
            found[query] = round(n / messages, 3)
            found[f"{query} ms"] = round(calls[f"{query} ms"] / n, 3)
    return found


def redis_commands(port: int) -> Counter[str]:
    """Calls so far per command, and microseconds as "name usec" (INFO commandstats)."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    calls: Counter[str] = Counter()
    for line in out.splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            name, stats = line[len("cmdstat_") :].split(":", 1)
            fields = dict(field.split("=") for field in stats.split(","))
            calls[name] = int(fields["calls"])
            calls[f"{name} usec"] = int(fields["usec"])
    return calls


def self_time(raw: Path) -> tuple[Counter[str], Counter[str]]:
    """py-spy's raw output (`frame;frame;... count` per stack): samples per leaf frame (where
    the time is spent, not passed through), and per the file or library it is in."""
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            leaves[stack.rsplit(";", 1)[-1]] += int(count)
    files: Counter[str] = Counter()
    for frame, n in leaves.items():
        where = frame.rpartition(" (")[2].rstrip(")").rsplit(":", 1)[0]
        files[where.split("site-packages/")[-1]] += n
    return leaves, files


def syscalls(pid: int) -> dict[str, int]:
    """The process's read and write system calls so far (/proc/<pid>/io: syscr, syscw)."""
    with open(f"/proc/{pid}/io") as io:
        fields = dict(line.split(": ") for line in io.read().splitlines())
    return {"reads": int(fields["syscr"]), "writes": int(fields["syscw"])}


def product_metrics(port: int) -> dict[str, dict[str, float]]:
    """The product's /metrics so far, read over HTTP. "gc": per generation, the garbage
    collector's collections, their seconds and those over 50 ms (`chat_gc_pause_seconds`,
    realtime/garbage.py). "publish": the publisher's batches, their publishes and seconds
    (`chat_publish_batch_*`, realtime/publisher.py), and the fan-out's latency sum and count."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=60) as response:
        text = response.read().decode()
    gc: dict[str, float] = {}
    publish: dict[str, float] = {}
    # (family, sample suffix) -> the name it is kept under
    kept = {
        ("chat_publish_batch_size", "_count"): "batches",
        ("chat_publish_batch_size", "_sum"): "batch publishes",
        ("chat_publish_batch_seconds", "_sum"): "batch seconds",
        ("chat_fanout_latency_seconds", "_count"): "fanouts",
        ("chat_fanout_latency_seconds", "_sum"): "fanout seconds",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            suffix = sample.name[len(family.name) :]
            if (family.name, suffix) in kept:
                publish[kept[family.name, suffix]] = sample.value
            if family.name != "chat_gc_pause_seconds":
                continue
            generation = sample.labels.get("generation")
            if suffix == "_count":
                gc[f"{generation} collections"] = sample.value
            elif suffix == "_sum":
                gc[f"{generation} seconds"] = sample.value
            elif suffix == "_bucket" and sample.labels.get("le") == "0.05":
                gc[f"{generation} within 50 ms"] = sample.value
    for generation in "012":
        within = gc.pop(f"{generation} within 50 ms", 0.0)
        gc[f"{generation} over 50 ms"] = gc.get(f"{generation} collections", 0.0) - within
    return {"gc": gc, "publish": publish}


def batches(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None] | None:
    """The publisher's batches over the window: how many, their mean publishes and mean ms;
    and the mean ms from an event's commit to its frames written (chat_fanout_latency)."""
    grew = {k: v - before.get(k, 0.0) for k, v in after.items()}
    count = grew.get("batches", 0.0)
    if not count:
        return None
    fanouts = grew.get("fanouts", 0.0)
    return {
        "batches": count,
        "publishes_each": round(grew["batch publishes"] / count, 2),
        "ms_each": round(grew["batch seconds"] / count * 1000, 2),
        "commit_to_written_ms": round(grew["fanout seconds"] / fanouts * 1000, 2)
        if fanouts
        else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, required=True, help="messages/s, all publishers")
    parser.add_argument(
        "--target", default="product", choices=("product", "socketio", "floor", "ceiling")
    )
    parser.add_argument("--duration", type=float, default=20.0, help="the measured seconds")
    # Scenario 1's room shape by default; scenario 3's: --rooms 100 --connections 1000
    # --publishers 20.
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--connections", type=int, default=200, help="subscribers, all rooms")
    parser.add_argument("--publishers", type=int, default=10)
    parser.add_argument("--py-spy", help="a py-spy executable: sample the server")
    parser.add_argument("--top", type=int, default=25, help="frames to list")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a product setting; {redis} in it is the run's Redis (host:port)",
    )
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    results = ROOT / "bench" / "results" / f"costs-{args.target}-{stamp}"
    results.mkdir(parents=True)
    services = Services(Path(tempfile.mkdtemp(prefix="chat-costs-")), results)
    services.pg_options = "-c shared_preload_libraries=pg_stat_statements -c track_wal_io_timing=on"
    services.settings = dict(item.split("=", 1) for item in args.set)
    try:
        services.start()
        pg = services.pg_settings()
        with psycopg.connect(
            host="127.0.0.1", port=services.pg_port, user="postgres", dbname="chat", autocommit=True
        ) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        services.manage("migrate", "--noinput")
        tokens = services.tmp / "tokens.json"
        users = str(2 * (args.connections + args.publishers))
        rooms = str(args.rooms)
        services.manage("provision_load", "--users", users, "--rooms", rooms, "--out", str(tokens))
        (server,) = services.start_servers(args.target, 1)
        wait_for_quiet()  # a shared machine: another benchmark would count as this one
        ready, report = results / "ready", results / "report.json"
        warmup = 3.0
        load = subprocess.Popen(
            [
                str(BIN / "chat-loadtest"),
                *("--url", server.url, "--tokens", str(tokens), "--rooms", rooms),
                *("--connections", str(args.connections), "--publishers", str(args.publishers)),
                *("--rate", str(args.rate)),
                *("--duration", str(args.duration), "--warmup", str(warmup), "--procs", "2"),
                *("--connect-rate", "500", "--max-pending", "100"),
                *("--json", str(report), "--ready-file", str(ready), "--quiet"),
            ],
            stdout=subprocess.DEVNULL,
        )
        meter = services.cpu_meter([server], load.pid)
        before: dict[str, Any] = {}
        reading: list[threading.Thread] = []
        spy: subprocess.Popen[bytes] | None = None
        raw = results / f"py-spy-{args.target}-{args.rate:g}.txt"

        def opened() -> None:
            """At the start of the window: counters read, py-spy started."""
            nonlocal spy
            before["pg"], before["redis"] = (
                pg_counters(services.pg_port),
                redis_commands(services.redis_port),
            )
            before["syscalls"] = syscalls(server.pid)
            if args.target == "product":
                # Aside: a busy server may take a while to answer, and the window opens now.
                reading.append(
                    threading.Thread(
                        target=lambda: before.__setitem__("metrics", product_metrics(server.port)),
                        daemon=True,
                    )
                )
                reading[0].start()
            if args.py_spy:
                # Only samples that hold the GIL: a thread waiting in C (the event loop's
                # epoll, the thread pool's queue) is not CPU. --native would pause the server.
                spy = subprocess.Popen(
                    [
                        *(args.py_spy, "record", "-p", str(server.pid), "-r", "100", "--gil"),
                        *("-d", str(int(args.duration)), "--nonblocking"),
                        *("--format", "raw", "-o", str(raw)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )

        after: dict[str, Any] = {}

        def closed() -> None:
            """At the end of the window, before the generator's sockets close."""
            after["syscalls"] = syscalls(server.pid)
            if args.target == "product":  # first: the generator's sockets close soon
                after["metrics"] = product_metrics(server.port)
            after["redis"] = redis_commands(services.redis_port)
            after["pg"] = pg_counters(services.pg_port)

        cpu = measure_window(
            meter,
            ready,
            load,
            START_DELAY_S + warmup,
            args.duration,
            opened=opened,
            closed=closed,
        )
        for thread in reading:
            thread.join(timeout=60)
        syscalls_after, metrics_after = after["syscalls"], after.get("metrics")
        pg_after, redis_after = after["pg"], after["redis"]
        load.wait(timeout=args.duration + 120)
        if spy is not None:
            spy.wait(timeout=60)
        data = json.loads(report.read_text())
    finally:
        services.stop()
    delivery = data["delivery"]
    metrics_before = before.get("metrics")
    seconds = cpu.get("window_s", args.duration)
    # Each message reaches its room's subscribers.
    messages = delivery["deliveries_per_s"] * seconds / (args.connections / args.rooms)
    deliveries = delivery["deliveries_per_s"] * seconds
    result: dict[str, Any] = {
        "target": args.target,
        "rate": args.rate,
        "postgres_settings": pg,
        "settings": services.settings,
        "deliveries_per_s": delivery["deliveries_per_s"],
        "latency_ms": delivery["latency_ms"],
        "ok": data["ok"],
        "problems": data["problems"],
        "others_cores": others_cores(cpu),
        "cpu_us_per_delivery": {
            k: v / deliveries * 1e6
            for k, v in cpu.items()
            if k not in ("window_s", "machine") and deliveries
        },
        # The server's reads and writes (sockets, PostgreSQL, Redis): frames per write.
        "server_syscalls_per_delivery": {
            k: round((n - before["syscalls"][k]) / deliveries, 3)
            for k, n in syscalls_after.items()
            if deliveries
        },
        # Over the window: the garbage collector's pauses by generation (the product only).
        # None when the reading at the window's start failed.
        "gc_pauses": {
            k: round(v - metrics_before["gc"][k], 4) for k, v in metrics_after["gc"].items()
        }
        if metrics_before and metrics_after
        else None,
        # The publisher's batches over the window (the product only).
        "publish_batches": batches(metrics_before["publish"], metrics_after["publish"])
        if metrics_before and metrics_after
        else None,
        "postgres_per_message": {
            k: (pg_after[0][k] - before["pg"][0][k]) / messages for k in PG_NAMES if messages
        },
        # How long PostgreSQL's WAL fsyncs took: each commit of a batch waits for one.
        "postgres_ms_per_fsync": round(
            (pg_after[0]["wal_fsync_ms"] - before["pg"][0]["wal_fsync_ms"])
            / max(pg_after[0]["wal_fsyncs"] - before["pg"][0]["wal_fsyncs"], 1),
            3,
        ),
        # Calls per message by statement, and "<statement> ms": PostgreSQL's milliseconds
        # per call of it (its execution: planning and the commit are not counted).
        "statements_per_message": statements(before["pg"][1], pg_after[1], messages),
        # Calls per message by command, and "<command> usec": Redis' microseconds on them.
        "redis_per_message": {
            k: round((n - before["redis"].get(k, 0)) / messages, 3)
            for k, n in redis_after.items()
            if messages and n > before["redis"].get(k, 0)
        },
    }
    if spy is not None and raw.exists():
        leaves, files = self_time(raw)
        samples = sum(leaves.values())
        us = result["cpu_us_per_delivery"].get("server", 0.0) / max(samples, 1)
        result["py_spy"] = {
            "samples": samples,
            "by_file": [
                {"file": f, "share": n / samples, "us_per_delivery": n * us}
                for f, n in files.most_common(args.top)
            ],
            "by_frame": [
                {"frame": f, "share": n / samples, "us_per_delivery": n * us}
                for f, n in leaves.most_common(args.top)
            ],
        }
    (results / "costs.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"costs: {results / 'costs.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
