"""Scenario 1 for the ceiling and the product in turn, step by step.

The machine is shared and its speed drifts over minutes: run minutes apart, the
ceiling's own best step has ranged from 60k to 140k deliveries/s, so a ratio of
two targets measured one after the other says as much about the machine as about
them. Here a server of each is up at once and, at every rate, the two targets'
steps run back to back, taking turns to go first.
"""

from __future__ import annotations

import json
from typing import Any

from bench.scenarios import Bench, Outcome, Run, ends_stepping, stepped
from bench.services import Server

PAIR = ("ceiling", "product")


def fanout_interleaved(bench: Bench) -> dict[str, Outcome]:
    """Scenario 1 on the ceiling and the product in turn; each stops by `step_up`'s rule."""
    servers: dict[str, Server] = {}
    runs: dict[str, list[Run]] = {target: [] for target in PAIR}
    steps: list[dict[str, Any]] = []
    try:
        for target in PAIR:
            (servers[target],) = bench.servers(target)
        for i, rate in enumerate(bench.plan.fanout_rates):
            order = PAIR if i % 2 == 0 else PAIR[::-1]
            going = [t for t in order if t in servers]
            if not going:
                break
            for target in going:
                name, url = f"s1-{target}-{rate:g}", servers[target].url
                runs[target].append(bench.run(name, url, bench.plan.fanout, rate))
                if ends_stepping(runs[target][-1]):
                    # Done; and a server that fell behind must not work off its backlog
                    # during the other target's steps.
                    servers.pop(target).stop()
            if len(going) == len(PAIR):
                steps.append(_paired(rate, going[0], runs["ceiling"][-1], runs["product"][-1]))
                ratio = steps[-1]["ratio"]
                print(f"    s1 at {rate:g} msg/s: product / ceiling = {_times(ratio)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    (bench.results / "s1-interleaved.json").write_text(json.dumps(steps, indent=2))
    outcomes = {target: stepped(runs[target]) for target in PAIR}
    outcomes["product"].extra["interleaved"] = steps
    return outcomes


def _paired(rate: float, first: str, ceiling: Run, product: Run) -> dict[str, Any]:
    """One rate's two steps side by side, and the product's deliveries/s over the ceiling's."""
    sides = {name: _side(run) for name, run in (("ceiling", ceiling), ("product", product))}
    base = sides["ceiling"]["deliveries_per_s"]
    ratio = sides["product"]["deliveries_per_s"] / base if base else None
    return {"rate": rate, "first": first, "ratio": ratio, **sides}


def _side(run: Run) -> dict[str, Any]:
    delivery = run.report["delivery"]
    return {
        "deliveries_per_s": delivery["deliveries_per_s"],
        "p99_ms": delivery["latency_ms"]["p99"],
        "ok": bool(run.report["ok"]),
        "passed": run.passed,
    }


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"
