"""docs/benchmarks.md: the machine, the versions, the command and the results table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.cpu import others_cores
from bench.interleave import table, versus_socketio
from bench.scenarios import P99_LIMIT_MS, TARGETS, Outcome, Plan, Run
from bench.services import PG_CTL, ROOT, SOCKETIO

SCENARIOS = {
    "1": "Fan-out: 1 room, 200 subscribers, 1 process",
    "2": "Idle: open connections on 1 process",
    "3": "Many rooms: 1,000 clients in 100 rooms, 20 publishers",
    "4": "Two processes: subscribers on one, publishers on the other",
    "5": "Capacity: concurrent connections on 1 process",
}
PACKAGES = ("Django", "channels", "channels-redis", "redis", "uvicorn", "websockets", "uvloop")

Getter = Callable[[Outcome], float | None]


def _clean(outcome: Outcome) -> float | None:
    return outcome.value


def _peak(outcome: Outcome) -> float | None:
    peak = outcome.extra.get("peak")
    return float(peak) if peak is not None else None


def _clean_rate(outcome: Outcome) -> float | None:
    """The offered msg/s of the best clean step."""
    return max((run.rate for run in outcome.runs if run.passed), default=None)


def _best(outcome: Outcome) -> Run | None:
    return max((run for run in outcome.runs if run.passed), key=lambda r: r.rate, default=None)


def _server_us(outcome: Outcome) -> float | None:
    best = _best(outcome)
    return best.cpu_us("server") if best else None


def _stores_us(outcome: Outcome) -> float | None:
    """PostgreSQL's and Redis' CPU per delivery at the best clean step, idle or not."""
    best = _best(outcome)
    return best.cpu_us("postgres", "redis") if best else None


# (scenario, what, unit, lower is better, how to read it from an outcome)
ROWS: list[tuple[str, str, str, bool, Getter]] = [
    ("1", f"fan-out, best step with p99 <= {P99_LIMIT_MS:g} ms", "deliveries/s", False, _clean),
    ("1", "fan-out, peak without loss (any latency)", "deliveries/s", False, _peak),
    ("1", "fan-out, server CPU at the best clean step", "us per delivery", True, _server_us),
    ("1", "fan-out, PostgreSQL + Redis CPU, same step", "us per delivery", True, _stores_us),
    ("2", "idle connections", "KB RSS per connection", True, _clean),
    ("3", f"many rooms, best step with p99 <= {P99_LIMIT_MS:g} ms", "deliveries/s", False, _clean),
    ("3", "many rooms, peak without loss", "deliveries/s", False, _peak),
    (
        "4",
        f"two processes, best step with p99 <= {P99_LIMIT_MS:g} ms",
        "deliveries/s",
        False,
        _clean,
    ),
    ("4", "two processes, peak without loss", "deliveries/s", False, _peak),
    ("5", "capacity, connections held with no errors", "connections", False, _clean),
]


def machine(code: str) -> list[tuple[str, str]]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
    node = _first_line(["node", "--version"])
    lock = json.loads((SOCKETIO / "package-lock.json").read_text())["packages"]
    versions += f"; Node {node}, " + ", ".join(
        f"{name} {lock[f'node_modules/{name}']['version']}"
        for name in ("socket.io", "@socket.io/redis-adapter", "redis")
    )
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} cores, shared with the load generator"),
        ("Memory", f"{mem_kb / 1024 / 1024:.1f} GiB"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("Packages", versions),
        ("Redis", _first_line(["redis-server", "--version"])),
        ("PostgreSQL", _first_line([str(PG_CTL), "--version"])),
        ("Code", code),
    ]


def _first_line(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return done.stdout.split("\n")[0]


def git_state() -> str:
    """The commit, and whether the tree had changes: read when the run starts."""
    head = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(ROOT), "status", "--porcelain"])
    return f"commit {head}" + (" plus uncommitted changes" if dirty else "")


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "none"
    return f"{value:,.1f}" if unit.startswith(("KB", "us")) else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def _at_end(correctness: dict[str, int]) -> str:
    at_end = correctness.get("lost_at_end", 0)
    return f" ({at_end} at the end)" if at_end else ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


_us = _ms  # microseconds per delivery, to the same tenth


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(
    plan: Plan,
    command: str,
    started: datetime,
    elapsed_s: float,
    outcomes: dict[str, dict[str, Outcome]],
    provisioning: str,
    results_dir: Path,
    code: str,
    postgres: dict[str, str] | None = None,
) -> str:
    checked = ", ".join(f"{k}={v}" for k, v in (postgres or {}).items() if k != "server_version")
    out = [
        "# Benchmarks",
        "",
        "Written by `bench/run.py` (`make bench`); rerun it rather than editing this file.",
        "",
        f"- Command: `{command}`" + (" (the smoke version)" if plan.quick else ""),
        f"- Date: {started.astimezone(UTC):%Y-%m-%d %H:%M} UTC; the run took"
        f" {elapsed_s / 60:.1f} min",
        *(f"- {k}: {v}" for k, v in machine(code)),
        f"- Provisioning: {provisioning}",
        f"- Raw reports (JSON, PNG plots, generator and server logs):"
        f" `{results_dir.relative_to(ROOT)}/` (not committed)",
        "",
        "## How it is measured",
        "",
        "Each target runs as one process on 127.0.0.1 (two in scenario 4), started fresh,"
        " with Redis flushed, for each scenario and warmed up with 20 connections; every"
        " target is driven by the same `chat-loadtest` settings:",
        "",
        "- **product**: `uvicorn project.asgi:application --ws realtime.wsserver:WebSocketProtocol"
        " --ws-max-size 65536 --ws-per-message-deflate false` over PostgreSQL"
        f" (durable as in production; the run read back {checked or 'nothing'}) and Redis,"
        " flood control raised as `project/settings.py` asks of load tests;",
        "- **floor**: `bench/baselines/floor/`, the Channels tutorial consumer"
        " (AsyncWebsocketConsumer, RedisChannelLayer, `group_send`, `json.dumps` per recipient)"
        " under the same uvicorn flags and Redis;",
        "- **ceiling**: `bench/baselines/ceiling.py`, a bare `websockets` server doing one"
        " `broadcast` per message, no Redis, no database;",
        "- **socketio**: `bench/baselines/socketio/server.js`, Socket.IO 4 on Node with"
        " `@socket.io/redis-adapter` (every broadcast also published on Redis) and a Redis"
        " INCR per message for the room's seq, no database; the generator speaks Socket.IO's"
        " wire protocol to it (loadtest/socketio.py). It serves scenario 1's room shape only,"
        " so it is n/a in the others.",
        "",
        "CPU per delivery is user + system time of a process tree, read from /proc"
        " (bench/cpu.py) over each step's measured window (after warmup), divided by the"
        " deliveries counted in it: the server's own, and separately PostgreSQL's (postmaster"
        " and backends) and Redis', whichever target drives them. *Others' cores* is the"
        " machine's busy time (/proc/stat) that neither these nor the generator explain,"
        " averaged over the window: other work sharing the two cores, which makes a step's"
        " figures suspect when it is more than a few hundredths.",
        "",
        "Connections open at 500/s with at most 100 handshakes in flight"
        " (`--connect-rate 500 --max-pending 100`), so a slow handshake slows the opening"
        " down instead of failing it.",
        "The generator (`chat-loadtest --procs 2`, docs/loadtest.md) runs on the same two cores"
        " as the server, so every number is what the server achieves next to it; the machine"
        " is shared with other work, so expect a spread of 10-20 % between runs.",
        f"Stepped scenarios raise the publish rate until a step loses, duplicates, reorders or"
        f" refuses anything, or delivers under 80 % of what it was offered. A step is *clean*"
        f" when it is correct and its p99 is at most {P99_LIMIT_MS:g} ms; the table gives the"
        f" best clean step and the peak of all correct steps, as deliveries/s measured after"
        f" warmup.",
        "",
        "## Results",
        "",
        "| # | measure | unit | floor | product | ceiling | socketio | product / floor"
        " | product / ceiling | product / socketio |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, what, unit, _lower, get in ROWS:
        if key not in outcomes:
            continue
        row = outcomes[key]
        values = {t: get(row[t]) if t in row else None for t in TARGETS}
        cells = [
            (_num(values[t], unit) + ("" if row[t].clean else " (errors)")) if t in row else "n/a"
            for t in TARGETS
        ]
        out.append(
            f"| {key} | {what} | {unit} | {' | '.join(cells)} "
            f"| {_ratio(values['product'], values['floor'])} "
            f"| {_ratio(values['product'], values['ceiling'])} "
            f"| {_ratio(values['product'], values['socketio'])} |"
        )
    out += [
        "",
        "Memory (scenario 2) and CPU: lower is better, so a ratio under 1 means the product"
        " uses less. CPU rows compare each target at its own best clean step; the interleaved"
        " table below compares them at the same offered load."
        ' "(errors)": measured, but some connections failed or dropped (see Details).',
        "",
        *table(outcomes),
        "## Targets from the issue",
        "",
        *_targets(outcomes, plan),
        "",
        "## Details",
        "",
    ]
    for key, title in SCENARIOS.items():
        if key in outcomes:
            out += _details(key, title, outcomes[key])
    return "\n".join(out) + "\n"


def _details(key: str, title: str, by_target: dict[str, Outcome]) -> list[str]:
    out = [f"### {key}. {title}", ""]
    for target, outcome in by_target.items():
        out.append(f"- **{target}**: {outcome.detail}")
    runs = [run for outcome in by_target.values() for run in outcome.runs]
    if runs:
        out += [
            "",
            "| run | msg/s | deliveries/s | p50 ms | p99 ms | max ms | lost | dup | ooo"
            " | conns ok/failed/dropped | server us | PG us | Redis us | others' cores | result |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| ---: | ---: | --- |",
        ]
        for run in runs:
            r = run.report
            lat, cor, con = r["delivery"]["latency_ms"], r["correctness"], r["connections"]
            if run.passed:
                verdict = "clean"
            elif r["ok"]:
                verdict = f"correct, p99 over {P99_LIMIT_MS:g} ms"
            else:
                verdict = "FAIL: " + "; ".join(r["problems"])[:160]
            out.append(
                f"| {run.name} | {run.rate:g} | {r['delivery']['deliveries_per_s']:,.0f} "
                f"| {_ms(lat['p50'])} | {_ms(lat['p99'])} | {_ms(lat['max'])} "
                f"| {cor['lost']}{_at_end(cor)} | {cor['duplicated']} | {cor['out_of_order']} "
                f"| {con['ok']}/{con['failed']}/{con['dropped']} | {_us(run.cpu_us('server'))} "
                f"| {_us(run.cpu_us('postgres'))} | {_us(run.cpu_us('redis'))} "
                f"| {_cores(others_cores(r.get('cpu') or {}))} | {verdict} |"
            )
    out.append("")
    return out


def _targets(outcomes: dict[str, dict[str, Outcome]], plan: Plan) -> list[str]:
    lines = []
    if plan.quick:
        steps = ", ".join(f"{r:g}" for r in plan.fanout_rates)
        lines += [
            f"The smoke version steps scenario 1 only at {steps} msg/s and holds"
            f" {plan.capacity.connections:,} connections in scenario 5: these verdicts are"
            " indicative at best; `make bench` measures them.",
            "",
        ]

    def get(key: str, target: str, getter: Getter = _clean) -> float | None:
        outcome = outcomes.get(key, {}).get(target)
        return getter(outcome) if outcome else None

    if "1" in outcomes:
        product = get("1", "product")
        floor, floor_peak = get("1", "floor"), get("1", "floor", _peak)
        lines.append(
            "- Scenario 1, at least 10x the floor: "
            + _met(_div(product, floor), 10.0)
            + " against the floor's best clean step; "
            + _met(_div(product, floor_peak), 10.0)
            + " against its peak at any latency"
        )
        lines.append("- Scenario 1, at least 1.0x the ceiling: " + _versus_ceiling(get))
        lines += versus_socketio(outcomes)
    if "2" in outcomes:
        kb = get("2", "product")
        verdict = "met" if kb is not None and kb <= 16 else "not met"
        if "product" in outcomes["2"] and not outcomes["2"]["product"].clean:
            verdict += ", and some connections failed"
        lines.append(
            "- Scenario 2, at most 16 KB per idle connection: "
            + verdict
            + (f" ({kb:.1f} KB)" if kb is not None else "")
        )
    if "5" in outcomes:
        held, tried = get("5", "product"), plan.capacity.connections + plan.capacity.publishers
        clean = "product" in outcomes["5"] and outcomes["5"]["product"].clean
        verdict = "met" if clean and held is not None and held >= 19_000 else "not met"
        if tried < 19_000:
            verdict = "not measured at full size by the smoke version"
        lines.append(
            f"- Scenario 5, 19,000 connections with no errors: {verdict}"
            + (f" ({held:,.0f} of {tried:,} held" if held is not None else "")
            + ("" if held is None else ", with errors)" if not clean else ")")
        )
    return lines


def _versus_ceiling(get: Callable[[str, str, Getter], float | None]) -> str:
    """Best clean steps compared as steps: two targets that both delivered everything a
    step offered differ in deliveries/s only by the messages counted inside the measured
    window, so "the same step" is a tie, not a loss by 0.2%."""
    rates = get("1", "product", _clean_rate), get("1", "ceiling", _clean_rate)
    ratio = _div(get("1", "product", _clean), get("1", "ceiling", _clean))
    peaks = _div(get("1", "product", _peak), get("1", "ceiling", _peak))
    if rates[0] is None or rates[1] is None or ratio is None:
        return "not met (one side had no clean step)"
    verdict = "met" if rates[0] >= rates[1] else "not met"
    return (
        f"{verdict}: best clean step {rates[0]:g} msg/s for the product, {rates[1]:g} for the"
        f" ceiling; deliveries/s at those steps {ratio:.2f}x"
        + ("" if peaks is None else f"; peaks without loss {peaks:.2f}x")
    )


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _met(ratio: float | None, target: float) -> str:
    if ratio is None:
        return "not met (one side had no result)"
    return ("met" if ratio >= target else "not met") + f" ({ratio:.2f}x)"
