"""Scenario 1 for the ceiling, the product, Socket.IO and the floor in turn, step by step.

The machine is shared and its speed drifts over minutes: run minutes apart, the
ceiling's own best step has ranged from 60k to 140k deliveries/s, so a ratio of
two targets measured one after the other says as much about the machine as about
them. Here a server of each is up at once and, at every rate, the targets' steps
run back to back, taking turns to go first. Each step measures the CPU its server,
PostgreSQL and Redis used (bench/cpu.py): the other servers are idle meanwhile.
"""

from __future__ import annotations

import json
from typing import Any

from bench.cpu import others_cores
from bench.scenarios import Bench, Outcome, Run, ends_stepping, stepped
from bench.services import Server

# The targets scenario 1 interleaves, in the order they go at the first rate.
ORDER = ("ceiling", "product", "socketio", "floor")
# The stores each target's own work goes through, counted with its server's CPU.
STORES = {"product": ("postgres", "redis"), "floor": ("redis",), "socketio": ("redis",)}


def fanout_interleaved(bench: Bench, targets: list[str]) -> dict[str, Outcome]:
    """Scenario 1 on `targets` in turn; each stops by `step_up`'s rule."""
    group = [t for t in ORDER if t in targets]
    servers: dict[str, Server] = {}
    runs: dict[str, list[Run]] = {target: [] for target in group}
    steps: list[dict[str, Any]] = []
    try:
        # Redis is flushed once, before any of them starts: not under a warmed-up one.
        bench.services.flush_redis()
        for target in group:
            (servers[target],) = bench.services.start_servers(target, 1)
        bench.warm_up(list(servers.values()))
        for i, rate in enumerate(bench.plan.fanout_rates):
            order = group[i % len(group) :] + group[: i % len(group)]
            going = [t for t in order if t in servers]
            if not going:
                break
            step: dict[str, Any] = {"rate": rate, "first": going[0]}
            for target in going:
                run = bench.run(f"s1-{target}-{rate:g}", [servers[target]], bench.plan.fanout, rate)
                runs[target].append(run)
                step[target] = side(target, run)
                if ends_stepping(run):
                    # Done; and a server that fell behind must not work off its backlog
                    # during the other targets' steps.
                    servers.pop(target).stop()
            steps.append(step)
            print(f"    s1 at {rate:g} msg/s: {_summary(step)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    (bench.results / "s1-interleaved.json").write_text(json.dumps(steps, indent=2))
    outcomes = {target: stepped(runs[target]) for target in group}
    for outcome in outcomes.values():
        outcome.extra["interleaved"] = steps
    return outcomes


def side(target: str, run: Run) -> dict[str, Any]:
    """One target's step: deliveries/s, p99, and CPU microseconds per delivery."""
    delivery = run.report["delivery"]
    return {
        "deliveries_per_s": delivery["deliveries_per_s"],
        "p99_ms": delivery["latency_ms"]["p99"],
        "ok": bool(run.report["ok"]),
        "passed": run.passed,
        "server_us": run.cpu_us("server"),
        "postgres_us": run.cpu_us("postgres"),
        "redis_us": run.cpu_us("redis"),
        "total_us": run.cpu_us("server", *STORES.get(target, ())),
        "others_cores": others_cores(run.report.get("cpu") or {}),
    }


def _summary(step: dict[str, Any]) -> str:
    parts = []
    for other in ("ceiling", "socketio"):
        if "product" in step and other in step:
            ratio = _div(step["product"]["deliveries_per_s"], step[other]["deliveries_per_s"])
            cpu = _div(step["product"]["server_us"], step[other]["server_us"])
            parts.append(f"product / {other} = {_times(ratio)} deliveries, {_times(cpu)} CPU")
    return "; ".join(parts) or "-"


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(outcomes: dict[str, dict[str, Outcome]]) -> list[str]:
    """docs/benchmarks.md: scenario 1's interleaved steps, the product against the others."""
    steps = _steps(outcomes)
    if not steps:
        return []
    out = [
        "### Scenario 1, interleaved steps",
        "",
        "Scenario 1's steps were interleaved (a server of each target up throughout, their"
        " steps at each rate back to back, taking turns to go first) because this shared"
        " machine's speed drifts over minutes, and targets measured minutes apart are not"
        " measured on the same machine. CPU is user + system time from /proc over each step's"
        " measured window, per delivery: the server's process, and with it the stores its"
        " work goes through (PostgreSQL and Redis for the product, Redis for the floor and"
        " Socket.IO); per-store figures are in the Details table.",
        "",
        "| msg/s | first | product deliveries/s | product p99 ms | product / ceiling"
        " | product / socketio | product server us | socketio server us"
        " | product +PG+Redis us | socketio +Redis us |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for step in steps:
        product, ceiling, sio = step.get("product"), step.get("ceiling"), step.get("socketio")
        if product is None:
            continue
        out.append(
            f"| {step['rate']:g} | {step['first']} | {product['deliveries_per_s']:,.0f}"
            + ("" if product["ok"] else " (failed)")
            + f" | {_us(product['p99_ms'])} | {_ratio(product, ceiling)} | {_ratio(product, sio)}"
            f" | {_us(product['server_us'])} | {_us(sio and sio['server_us'])}"
            f" | {_us(product['total_us'])} | {_us(sio and sio['total_us'])} |"
        )
    return [*out, ""]


def _ratio(product: dict[str, Any], other: dict[str, Any] | None) -> str:
    if other is None:
        return "-"
    value = _div(product["deliveries_per_s"], other["deliveries_per_s"])
    return _times(value) + ("" if other["ok"] else " (other failed)")


def _steps(outcomes: dict[str, dict[str, Outcome]]) -> list[dict[str, Any]]:
    for outcome in outcomes.get("1", {}).values():
        if "interleaved" in outcome.extra:
            return list(outcome.extra["interleaved"])
    return []


def versus_socketio(outcomes: dict[str, dict[str, Outcome]]) -> list[str]:
    """Issue 16's scenario 1 targets: deliveries/s at p99 <= 100 ms, and CPU per delivery at
    the same offered load (the highest rate both stepped through cleanly)."""
    steps, by_target = _steps(outcomes), outcomes.get("1", {})
    if "product" not in by_target or "socketio" not in by_target:
        return []
    both = [
        s
        for s in steps
        if s.get("product", {}).get("passed") and s.get("socketio", {}).get("passed")
    ]
    product, sio = by_target["product"].value, by_target["socketio"].value
    lines = [
        "- Scenario 1, deliveries/s at p99 <= 100 ms at least 1.0x Socket.IO's: "
        + _met(_div(product, sio), 1.0, above=True)
    ]
    if not both:
        return [*lines, "- CPU per delivery against Socket.IO: no rate was clean for both"]
    top = both[-1]
    p, s = top["product"], top["socketio"]
    rate = f"at {top['rate']:g} msg/s, the highest rate clean for both"
    lines.append(
        f"- Server CPU per delivery at most 1.0x Socket.IO's {rate}: "
        + _met(_div(p["server_us"], s["server_us"]), 1.0, above=False)
        + f" ({_us(p['server_us'])} us against {_us(s['server_us'])} us)"
    )
    lines.append(
        "- The same counting PostgreSQL and Redis for the product, Redis for Socket.IO,"
        " at most 1.5x: "
        + _met(_div(p["total_us"], s["total_us"]), 1.5, above=False)
        + f" ({_us(p['total_us'])} us against {_us(s['total_us'])} us)"
    )
    return lines


def _met(ratio: float | None, target: float, above: bool) -> str:
    if ratio is None:
        return "not met (one side had no result)"
    met = ratio >= target if above else ratio <= target
    return ("met" if met else "not met") + f" ({ratio:.2f}x)"
