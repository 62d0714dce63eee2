"""Many rooms on one Redis and on a three-shard Redis Cluster, side by side.

    python -m bench.cluster_load [--quick] [--append docs/benchmarks.md]

Scenario 3 of bench/scenarios.py (1,000 clients in 100 rooms, 20 publishers, its `Load`)
against one fresh, warmed-up product process, at the same offered rates twice: first with
REDIS_URL (one redis-server), then with REDIS_CLUSTER_NODES (three masters, no replicas,
bench/redis_cluster.py). The servers, database and generator are bench/services.py's and
bench/scenarios.py's. Reported per step: deliveries/s, p99, lost/duplicated/reordered, and
the CPU seconds each Redis process (each shard) used during the generator's
measured window (bench/cpu.py), with the CPU per delivery of Redis and of the app.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench.cpu import CpuMeter
from bench.redis_cluster import RedisCluster
from bench.scenarios import FULL, QUICK, Bench, Load, Plan, Run
from bench.services import ROOT, Server, Services, raise_open_files_limit
from bench.writeup import git_state

SHARDS = 3
ROOMS = 100
RATES = {False: (200.0, 400.0, 800.0, 1600.0), True: (200.0, 800.0)}  # msg/s, by --quick
SHARD = "shard :"  # CPU groups of one redis-server each, by port


class ClusterServices(Services):
    """bench/services.py's Redis and PostgreSQL; the product on a Redis Cluster once one is set.

    The single Redis stays up in cluster mode as Celery's broker, which cannot be a cluster;
    idle there, it is not metered then.
    """

    cluster: RedisCluster | None = None

    def cpu_meter(self, servers: list[Server], *args: Any, **kwargs: Any) -> CpuMeter:
        """Services' groups, with "redis" the cluster's masters, and one group per shard."""
        if self.cluster is None:
            shards = {f"{SHARD}{self.redis_port}": self.redis_pid}
        else:
            shards = {f"{SHARD}{n.port}": n.pid for n in self.cluster.nodes() if n.slots}
        groups = dict(super().cpu_meter(servers, *args, **kwargs).groups)
        groups["redis"] = list(shards.values())
        return CpuMeter({**groups, **{name: [pid] for name, pid in shards.items()}})

    def product_env(self) -> dict[str, str]:
        env = super().product_env()
        if self.cluster is not None:
            env.pop("REDIS_URL")
            env["REDIS_CLUSTER_NODES"] = self.cluster.seeds
            env["CELERY_BROKER_URL"] = self.redis_url
        return env

    def redis_ports(self) -> list[int]:
        """The redis-servers the product uses now: the one, or the cluster's masters."""
        return [self.redis_port] if self.cluster is None else self.cluster.master_ports()

    def flush_redis(self) -> None:
        super().flush_redis()
        if self.cluster is not None:
            for port in self.cluster.master_ports():
                subprocess.run(
                    ["redis-cli", "-p", str(port), "FLUSHALL"],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )


@dataclass
class Step:
    """One rate on one setup: the generator's report, with the CPU of its measured window."""

    setup: str
    run: Run

    @property
    def cpu(self) -> dict[str, float]:
        return dict(self.run.report.get("cpu") or {})

    def shards(self) -> dict[str, float]:
        """Redis CPU seconds by shard ("shard :port") over the measured window."""
        return {name: s for name, s in self.cpu.items() if name.startswith(SHARD)}


def one_setup(bench: Bench, setup: str, rates: tuple[float, ...]) -> tuple[list[Step], str]:
    """Every rate on one fresh, warmed-up product process over the current Redis, and where
    Redis spent its time (INFO commandstats over all the steps)."""
    services = bench.services
    if not isinstance(services, ClusterServices):
        raise TypeError("cluster_load needs ClusterServices")
    servers = bench.servers("product")
    key = "cluster" if "cluster" in setup else "single"
    try:
        for port in services.redis_ports():
            with _redis(port) as client:
                client.config_resetstat()
        steps = [
            Step(setup, bench.run(f"cl-{key}-{rate:g}", servers, bench.plan.rooms, rate))
            for rate in rates
        ]
        return steps, command_shares(services.redis_ports())
    finally:
        for server in servers:
            server.stop()


def command_shares(ports: list[int], top: int = 5) -> str:
    """The commands Redis spent most time in since CONFIG RESETSTAT, summed over `ports`."""
    usec: Counter[str] = Counter()
    for port in ports:
        with _redis(port) as client:
            for name, stats in client.info("commandstats").items():
                usec[name.removeprefix("cmdstat_")] += int(stats["usec"])
    total = sum(usec.values()) or 1
    return ", ".join(
        f"{name} {100 * spent / total:.0f} % ({spent / 1e6:.2f} s)"
        for name, spent in usec.most_common(top)
    )


def _redis(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)


def run(quick: bool, results: Path) -> tuple[list[Step], dict[str, str]]:
    """Both setups in turn: their steps, and Redis' time by command for each."""
    plan: Plan = QUICK if quick else FULL
    rates = RATES[quick]
    services = ClusterServices(Path(tempfile.mkdtemp(prefix="chat-cluster-bench-")), results)
    cluster = RedisCluster(masters=SHARDS, replicas=0)
    steps: list[Step] = []
    commands: dict[str, str] = {}
    try:
        services.start()
        services.manage("migrate", "--noinput")
        tokens = services.tmp / "tokens.json"
        users = plan.rooms.connections + plan.rooms.publishers
        services.manage(
            "provision_load", *("--users", str(users), "--rooms", str(ROOMS), "--out", str(tokens))
        )
        bench = Bench(services, tokens, results, plan)
        for setup in ("one Redis", f"cluster, {SHARDS} masters"):
            if "cluster" in setup:
                services.cluster = cluster.start()
            print(f"cluster_load: {setup}, rates {rates}", flush=True)
            measured, commands[setup] = one_setup(bench, setup, rates)
            steps += measured
    finally:
        cluster.stop()
        services.stop()
    return steps, commands


def _row(step: Step) -> str:
    d, c = step.run.report["delivery"], step.run.report["correctness"]
    p99 = d["latency_ms"]["p99"]
    shards = step.shards()
    per_shard = " / ".join(f"{seconds:.2f}" for seconds in shards.values()) or "-"
    redis_us, app_us = step.run.cpu_us("redis"), step.run.cpu_us("server")
    return (
        f"| {step.setup} | {step.run.rate:g} | {d['deliveries_per_s']:,.0f} "
        f"| {_num(p99)} | {c['lost']} / {c['duplicated']} / {c['out_of_order']} "
        f"| {per_shard} | {sum(shards.values()):.2f} | {_num(redis_us)} | {_num(app_us)} "
        f"| {_verdict(step.run)} |\n"
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _verdict(run: Run) -> str:
    if run.passed:
        return "clean"
    if run.report["ok"]:
        return "correct, p99 over 100 ms"
    return "FAIL: " + "; ".join(run.report.get("problems", []))


def markdown(
    steps: list[Step],
    commands: dict[str, str],
    command: str,
    started: datetime,
    code: str,
    load: Load,
) -> str:
    return (
        f"\n## Redis Cluster: many rooms on one Redis and on {SHARDS} shards\n\n"
        f"`{command}` ({started:%Y-%m-%d %H:%M} UTC, {code}): scenario 3's load "
        f"({load.connections:,} clients in {ROOMS} rooms, {load.publishers} publishers, "
        f"{load.duration:g} s measured after {load.warmup:g} s warmup) against one product "
        "process, the same offered rates on one redis-server (REDIS_URL) and on a "
        f"{SHARDS}-master Redis Cluster without replicas (REDIS_CLUSTER_NODES, "
        "bench/redis_cluster.py). Redis CPU: user+system seconds of each redis-server over the "
        "measured window (bench/cpu.py), per shard in port order; every process, the "
        "generator included, shares the machine's cores, so compare within one run.\n\n"
        "| Redis | msg/s | deliveries/s | p99 ms | lost / dup / ooo | Redis CPU s per shard "
        "| Redis CPU s | Redis CPU µs per delivery | app CPU µs per delivery | result |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
        + "".join(_row(step) for step in steps)
        + "\nWhere Redis spent its time over all the steps (INFO commandstats, every command the "
        "product sends, the fan-out's and the rest):\n\n"
        + "".join(f"- {setup}: {shares}\n" for setup, shares in commands.items())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two short steps per setup")
    parser.add_argument("--append", help="a Markdown file to add the table to (make bench)")
    args = parser.parse_args(argv)
    command = "python -m bench.cluster_load " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    raise_open_files_limit()
    started = datetime.now(UTC)
    code = git_state()
    results = ROOT / "bench" / "results" / (started.strftime("%Y%m%d-%H%M%S") + "-cluster")
    results.mkdir(parents=True)
    t0 = time.monotonic()
    steps, commands = run(args.quick, results)
    plan = QUICK if args.quick else FULL
    text = markdown(steps, commands, command, started, code, plan.rooms)
    (results / "cluster_load.json").write_text(json.dumps([_summary(s) for s in steps], indent=1))
    print(text)
    if args.append:
        with open(args.append, "a") as out:
            out.write(text)
    print(f"cluster_load: done in {(time.monotonic() - t0) / 60:.1f} min; reports in {results}")
    return 0


def _summary(step: Step) -> dict[str, Any]:
    return {
        "setup": step.setup,
        "rate": step.run.rate,
        "name": step.run.name,
        "delivery": step.run.report["delivery"]["deliveries_per_s"],
        "p99_ms": step.run.report["delivery"]["latency_ms"]["p99"],
        "correctness": step.run.report["correctness"],
        "cpu_s": step.cpu,
    }


if __name__ == "__main__":
    raise SystemExit(main())
