"""The issue's five scenarios on the floor, the product and the ceiling (1 on Socket.IO too).

Every run is one `chat-loadtest` process with the same settings for every target; its JSON
report is kept in the results folder, with the CPU the server, PostgreSQL and Redis used
over its measured window (bench/cpu.py).
"""

from __future__ import annotations

import json
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.cpu import QuietWaits, measure_window, us_per_delivery
from bench.services import BIN, ROOT, Server, Services, rss_kb
from loadtest.coordinator import START_DELAY_S

TARGETS = ("floor", "product", "ceiling", "socketio")
# Scenarios a target serves when not all: bench/baselines/socketio/ serves scenario 1's shape.
ONLY = {"socketio": ("1",)}
P99_LIMIT_MS = 100.0
SATURATED = 0.8  # a step that delivers less than this share of its offered load is saturated


@dataclass(frozen=True)
class Load:
    connections: int
    rooms: int
    publishers: int
    rate: float
    duration: float
    warmup: float
    connect_rate: float = 500.0
    # Capacity, not handshake throughput, is what the scenarios measure: a server that
    # completes handshakes slowly gets them more slowly instead of timing out.
    max_pending: int = 100
    drain: float = 5.0
    procs: int = 2  # the generator's workers: one per core


@dataclass(frozen=True)
class Plan:
    """How big and how long: `make bench` or `make bench QUICK=1`."""

    quick: bool
    fanout: Load
    fanout_rates: tuple[float, ...]
    idle: Load
    rooms: Load
    rooms_rates: tuple[float, ...]
    two_procs_rates: tuple[float, ...]
    capacity: Load


FULL = Plan(
    quick=False,
    fanout=Load(200, 1, 10, 0, duration=8, warmup=2),
    fanout_rates=(5, 10, 20, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1500),
    idle=Load(5000, 100, 0, 0, duration=6, warmup=0),
    rooms=Load(1000, 100, 20, 0, duration=8, warmup=2),
    rooms_rates=(50, 100, 200, 400, 800, 1600, 3200, 6400),
    two_procs_rates=(5, 10, 20, 50, 100, 200, 300, 400, 600, 800),
    # 19,000 sockets: what one process can hold under the 20,000 open files it may have.
    capacity=Load(18_990, 100, 10, 20, duration=10, warmup=1, drain=10),
)
QUICK = Plan(
    quick=True,
    fanout=Load(200, 1, 10, 0, duration=2, warmup=1, drain=2),
    fanout_rates=(5, 50, 500),
    idle=Load(1000, 100, 0, 0, duration=2, warmup=0),
    rooms=Load(1000, 100, 20, 0, duration=2, warmup=1, drain=2),
    rooms_rates=(100, 400),
    two_procs_rates=(20, 50),
    capacity=Load(2000, 100, 10, 20, duration=2, warmup=1, drain=3),
)


@dataclass
class Run:
    """One chat-loadtest run and what it found."""

    name: str
    rate: float
    report: dict[str, Any]
    passed: bool

    def cpu_us(self, *groups: str) -> float | None:
        """CPU microseconds per delivery of "server", "postgres" and/or "redis"."""
        cpu = self.report.get("cpu") or {}
        return us_per_delivery(cpu, groups, self.report["delivery"]["deliveries_per_s"])

    def line(self) -> str:
        d, c = self.report["delivery"], self.report["correctness"]
        p99 = d["latency_ms"]["p99"]
        server, stores = self.cpu_us("server"), self.cpu_us("postgres", "redis")
        cpu = "" if server is None or stores is None else f", CPU {server:.1f}+{stores:.1f} us"
        return (
            f"{self.name}: {d['deliveries_per_s']:,.0f} deliveries/s, p99 "
            f"{'-' if p99 is None else f'{p99:.1f}'} ms{cpu}, lost {c['lost']}, "
            f"conns {self.report['connections']['ok']}/{self.report['connections']['attempted']}"
            f" -> {'pass' if self.passed else 'FAIL'}"
        )


@dataclass
class Outcome:
    """One scenario's result for one target."""

    value: float | None  # the headline number; None when nothing passed
    detail: str
    clean: bool = True  # False: the value was measured, but the run had errors
    runs: list[Run] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, services: Services, tokens: Path, results: Path, plan: Plan):
        self.services, self.tokens, self.results, self.plan = services, tokens, results, plan
        self.quiet = QuietWaits()

    # Running the generator

    def loadtest(
        self,
        name: str,
        url: str,
        load: Load,
        rate: float,
        publish_url: str | None = None,
        ready_file: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        out = self.results / f"{name}.json"
        cmd = [
            str(BIN / "chat-loadtest"),
            *("--url", url, "--tokens", str(self.tokens)),
            *("--connections", str(load.connections), "--rooms", str(load.rooms)),
            *("--publishers", str(load.publishers), "--rate", str(rate)),
            *("--duration", str(load.duration), "--warmup", str(load.warmup)),
            *("--connect-rate", str(load.connect_rate), "--drain", str(load.drain)),
            *("--max-pending", str(load.max_pending)),
            *("--procs", str(load.procs), "--json", str(out)),
        ]
        if publish_url:
            cmd += ["--publish-url", publish_url]
        if ready_file:
            cmd += ["--ready-file", str(ready_file)]
        log = (self.results / f"{name}.log").open("wb")
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def finish(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        rate: float,
        cpu: dict[str, float] | None = None,
    ) -> Run:
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        path = self.results / f"{name}.json"
        if path.exists():
            report = json.loads(path.read_text())
        else:
            report = _crashed_report(self.results / f"{name}.log")
        if cpu is not None:
            report["cpu"] = cpu  # seconds per group over the measured window, and its length
            path.write_text(json.dumps(report, indent=2) + "\n")
        p99 = report["delivery"]["latency_ms"]["p99"]
        passed = bool(report["ok"]) and (p99 is None or p99 <= P99_LIMIT_MS)
        run = Run(name, rate, report, passed)
        print("   ", run.line(), flush=True)
        return run

    def run(self, name: str, servers: list[Server], load: Load, rate: float) -> Run:
        """One step (subscribers on the first server, publishers on the last) on a quiet machine."""
        ready = self.results / f"{name}.ready"
        ready.unlink(missing_ok=True)
        self.quiet()  # the machine is shared: other sessions' benchmarks would count as ours
        proc = self.loadtest(name, servers[0].url, load, rate, servers[-1].url, ready)
        meter = self.services.cpu_meter(servers, proc.pid)
        # The generator publishes START_DELAY_S after it touches `ready`, then warms up.
        cpu = measure_window(meter, ready, proc, START_DELAY_S + load.warmup, load.duration)
        return self.finish(name, proc, rate, cpu)

    def step_up(
        self, name: str, rates: tuple[float, ...], attempt: Callable[[str, float], Run]
    ) -> list[Run]:
        """Raise the rate step by step while the target stays correct and keeps up.

        Stepping goes on past a step that is only too slow (p99 over the limit), so that the
        peak throughput is found too; it stops at the first step that loses, duplicates,
        reorders or refuses anything, or that delivers under SATURATED of what was offered.
        """
        runs = []
        for rate in rates:
            runs.append(attempt(f"{name}-{rate:g}", rate))
            if ends_stepping(runs[-1]):
                break
        return runs

    def servers(self, target: str, count: int = 1) -> list[Server]:
        """Fresh servers, warmed up: lazy imports and pools must not count against a step."""
        self.services.flush_redis()
        servers = self.services.start_servers(target, count)
        self.warm_up(servers)
        return servers

    def warm_up(self, servers: list[Server]) -> None:
        warm = Load(20, 1, 1, 0, duration=0.5, warmup=0, drain=2)
        procs = [self.loadtest(f"warm-{server.name}", server.url, warm, 10) for server in servers]
        for proc in procs:
            proc.wait(timeout=60)

    def target(self, target: str, keys: list[str]) -> Iterator[tuple[str, Outcome]]:
        """Run the scenarios on one target, each on fresh, warmed-up processes.

        Fresh, because a process is not the same after a scenario: the product, for one,
        serves the fan-out at half the rate once 5,000 connections have come and gone.
        """
        scenarios: dict[str, Callable[[list[Server]], Outcome]] = {
            "1": self.fanout,
            "2": self.idle,
            "3": self.many_rooms,
            "4": self.two_processes,
            "5": self.capacity,
        }
        for key in keys:
            if key == "4" and target == "ceiling":
                continue  # one process and no bus between processes: nothing to measure
            if key not in ONLY.get(target, (key,)):
                continue
            servers = self.servers(target, 2 if key == "4" else 1)
            try:
                yield key, _guarded(partial(scenarios[key], servers))
            finally:
                for server in servers:
                    server.stop()

    # The scenarios

    def fanout(self, servers: list[Server]) -> Outcome:
        """1: one room, 200 subscribers, one process; the highest clean rate."""
        return self._stepped_on_one("s1", servers, self.plan.fanout, self.plan.fanout_rates)

    def idle(self, servers: list[Server]) -> Outcome:
        """2: N idle (subscribed) connections on one process; RSS per connection."""
        (server,) = servers
        load = self.plan.idle
        name = f"s2-{server.target}"
        time.sleep(1)
        before = rss_kb(server.pid)
        ready = self.results / f"{name}.ready"
        ready.unlink(missing_ok=True)
        proc = self.loadtest(name, server.url, load, 0, ready_file=ready)
        deadline = time.monotonic() + load.connections / load.connect_rate + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # let the last handshakes' garbage go
        after = rss_kb(server.pid)
        run = self.finish(name, proc, 0)
        ok = run.report["connections"]["ok"]
        per_conn = (after - before) / max(ok, 1)
        return Outcome(
            value=round(per_conn, 1),
            clean=bool(run.report["ok"]),
            detail=f"{per_conn:.1f} KB/conn ({before / 1024:.0f} -> {after / 1024:.0f} MB, "
            f"{ok} conns{'' if run.report['ok'] else ', with errors'})",
            runs=[run],
            extra={"rss_before_kb": before, "rss_after_kb": after, "per_conn_kb": per_conn},
        )

    def many_rooms(self, servers: list[Server]) -> Outcome:
        """3: 1,000 clients in 100 rooms, 20 publishers spread over the rooms."""
        return self._stepped_on_one("s3", servers, self.plan.rooms, self.plan.rooms_rates)

    def _stepped_on_one(
        self, key: str, servers: list[Server], load: Load, rates: tuple[float, ...]
    ) -> Outcome:
        (server,) = servers
        runs = self.step_up(
            f"{key}-{server.target}",
            rates,
            lambda name, rate: self.run(name, servers, load, rate),
        )
        return stepped(runs)

    def two_processes(self, servers: list[Server]) -> Outcome:
        """4: subscribers on one process, publishers on another, sharing Redis (and the DB)."""
        subs, pubs = servers
        load = self.plan.fanout
        runs = self.step_up(
            f"s4-{subs.target}",
            self.plan.two_procs_rates,
            lambda name, rate: self.run(name, [subs, pubs], load, rate),
        )
        return stepped(runs)

    def capacity(self, servers: list[Server]) -> Outcome:
        """5: 19,000 concurrent connections on one process, light traffic, no errors."""
        (server,) = servers
        load = self.plan.capacity
        ready = self.results / f"s5-{server.target}.ready"
        proc = self.loadtest(f"s5-{server.target}", server.url, load, load.rate, ready_file=ready)
        rss = 0
        while proc.poll() is None:
            if ready.exists() and server.alive():
                rss = max(rss, rss_kb(server.pid))
            time.sleep(0.5)
        run = self.finish(f"s5-{server.target}", proc, load.rate)
        conns = run.report["connections"]
        return Outcome(
            value=float(conns["ok"]),
            clean=bool(run.report["ok"]),
            detail=f"{conns['ok']}/{conns['attempted']} ok, {conns['failed']} failed, "
            f"{conns['dropped']} dropped, connect p99 {conns['connect_ms']['p99']} ms, "
            f"lost {run.report['correctness']['lost']}, server RSS {rss / 1024:.0f} MB"
            " while holding them",
            runs=[run],
        )


def _guarded(scenario: Callable[[], Outcome]) -> Outcome:
    """One scenario's failure (a server that died, say) is its result, not the end of the run."""
    try:
        return scenario()
    except Exception as error:
        traceback.print_exc()
        return Outcome(None, f"error: {type(error).__name__}: {error}")


def ends_stepping(run: Run) -> bool:
    """`step_up`'s stop rule: no higher step after one that failed or was saturated."""
    offered = run.rate * _per_message(run.report)
    delivered = run.report["delivery"]["deliveries_per_s"]
    return not run.report["ok"] or delivered < SATURATED * offered


def _per_message(report: dict[str, Any]) -> float:
    """Deliveries one message makes: the subscribers of a room."""
    cfg = report.get("config") or {}
    return max(int(cfg.get("connections", 0)), 1) / max(int(cfg.get("rooms", 1)), 1)


def stepped(runs: list[Run]) -> Outcome:
    """The best clean step (p99 within the limit), and the peak of all correct steps."""
    passed = [r for r in runs if r.passed]
    correct = [r for r in runs if r.report["ok"]]
    peak = max(correct, key=lambda r: r.report["delivery"]["deliveries_per_s"], default=None)
    extra: dict[str, Any] = {}
    parts = []
    if passed:
        best = max(passed, key=lambda r: r.rate)
        d = best.report["delivery"]
        parts.append(
            f"best clean step {best.rate:g} msg/s = {d['deliveries_per_s']:,.0f} deliveries/s"
            f" at p99 {d['latency_ms']['p99']} ms"
        )
    else:
        parts.append(f"no step had p99 <= {P99_LIMIT_MS:g} ms with nothing lost")
    if peak is not None:
        d = peak.report["delivery"]
        extra["peak"] = d["deliveries_per_s"]
        parts.append(
            f"peak {d['deliveries_per_s']:,.0f} deliveries/s without loss at {peak.rate:g} msg/s"
            f" (p99 {d['latency_ms']['p99']} ms)"
        )
    failed = [r for r in runs if not r.report["ok"]]
    if failed:
        parts.append(
            f"stopped at {failed[0].rate:g} msg/s: " + "; ".join(failed[0].report["problems"])
        )
    value = None
    if passed:
        value = max(passed, key=lambda r: r.rate).report["delivery"]["deliveries_per_s"]
    return Outcome(value=value, detail="; ".join(parts), runs=runs, extra=extra)


def _crashed_report(log: Path) -> dict[str, Any]:
    """Stand in for the report of a generator that died before writing one."""
    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
    empty = {"p50": None, "p95": None, "p99": None, "max": None, "mean": None, "count": 0}
    return {
        "ok": False,
        "problems": [f"generator crashed: {tail.strip().splitlines()[-1:] or '?'}"],
        "connections": {"ok": 0, "attempted": 0, "failed": 0, "dropped": 0, "connect_ms": empty},
        "delivery": {"deliveries_per_s": 0.0, "latency_ms": empty, "delivered": 0},
        "correctness": {"lost": 0, "duplicated": 0, "out_of_order": 0},
        "timeline": [],
        "histogram": {"edges_ms": [], "counts": []},
    }
