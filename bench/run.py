"""`make bench`: start Redis, PostgreSQL and the targets on loopback, run the scenarios,
write docs/benchmarks.md.

    python -m bench.run [--quick] [--scenarios 1,2,3,4,5] [--targets floor,product,ceiling,socketio]
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench.interleave import ORDER, fanout_interleaved
from bench.scenarios import FULL, ONLY, QUICK, TARGETS, Bench, Outcome
from bench.services import ROOT, Services, raise_open_files_limit
from bench.writeup import SCENARIOS, git_state, render

USERS = 10_000
ROOMS = 100


class OutOfTime(BaseException):
    """The run's time cap. Not an Exception: a scenario's own error handling must not keep it."""


def _out_of_time(signum: int, frame: FrameType | None) -> None:
    raise OutOfTime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="the 3-minute smoke version")
    parser.add_argument("--scenarios", default="1,2,3,4,5")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--command", help="the command to show in the write-up")
    parser.add_argument("--max-minutes", type=float, help="hard cap (default 40, quick 8)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    scenarios = [s for s in args.scenarios.split(",") if s in SCENARIOS]
    targets = [t for t in args.targets.split(",") if t in TARGETS]
    command = args.command or "python -m bench.run " + shlex.join(argv or sys.argv[1:])

    raise_open_files_limit()
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(int((args.max_minutes or (8 if plan.quick else 40)) * 60))
    started = datetime.now(UTC)
    code = git_state()  # other work may commit while the benchmark runs
    t0 = time.monotonic()
    results = ROOT / "bench" / "results" / started.strftime("%Y%m%d-%H%M%S")
    results.mkdir(parents=True)
    services = Services(Path(tempfile.mkdtemp(prefix="chat-bench-")), results)
    outcomes: dict[str, dict[str, Outcome]] = {}
    provisioning, postgres = "?", {}
    try:
        print(f"bench: services in {services.tmp}, reports in {results}", flush=True)
        services.start()
        postgres = services.pg_settings()
        print(f"bench: PostgreSQL runs with {postgres}", flush=True)
        if postgres.get("fsync") != "on" or postgres.get("synchronous_commit") != "on":
            raise RuntimeError(f"PostgreSQL is not durable as in production: {postgres}")
        services.manage("migrate", "--noinput")
        tokens = services.tmp / "tokens.json"
        begun = time.monotonic()
        services.manage(
            "provision_load",
            *("--users", str(USERS), "--rooms", str(ROOMS), "--out", str(tokens)),
        )
        provisioning = (
            f"`manage.py provision_load --users {USERS} --rooms {ROOMS}` took "
            f"{time.monotonic() - begun:.1f}s (process start and Django setup included)"
        )
        print(f"bench: {provisioning}", flush=True)
        bench = Bench(services, tokens, results, plan)
        # Scenario 1's targets run in turn, step by step (bench/interleave.py).
        group = [t for t in ORDER if t in targets] if "1" in scenarios else []
        group = group if len(group) > 1 else []
        for target in targets:
            if group and target == targets[0]:
                print(f"bench: scenario 1, {', '.join(group)} interleaved", flush=True)
                _collect(outcomes, _interleaved(bench, group), ["1"], group)
            keys = [k for k in scenarios if k != "1" or target not in group]
            keys = [k for k in keys if k in ONLY.get(target, (k,))]
            if keys:
                print(f"bench: {target}", flush=True)
                per_target = ((k, target, o) for k, o in bench.target(target, keys))
                _collect(outcomes, per_target, keys, [target])
    except OutOfTime:
        print("bench: out of time; writing what was measured", flush=True)
    finally:
        signal.alarm(0)
        services.stop()
    _plots(outcomes, results)
    text = render(
        plan,
        command,
        started,
        time.monotonic() - t0,
        outcomes,
        provisioning,
        results,
        code,
        postgres,
    )
    Path(args.out).write_text(text)
    print(f"bench: wrote {args.out} in {(time.monotonic() - t0) / 60:.1f} min", flush=True)
    return 0


def _interleaved(bench: Bench, group: list[str]) -> Iterator[tuple[str, str, Outcome]]:
    by_target = fanout_interleaved(bench, group)
    for target in group:
        yield "1", target, by_target[target]


def _collect(
    outcomes: dict[str, dict[str, Outcome]],
    measured: Iterator[tuple[str, str, Outcome]],
    keys: list[str],
    targets: Sequence[str],
) -> None:
    """Keep and print each (scenario, target, outcome); an error fails whatever is left."""
    try:
        for key, target, outcome in measured:
            outcomes.setdefault(key, {})[target] = outcome
            which = f" ({target})" if len(targets) > 1 else ""  # the header names one target
            print(f"bench:   {key}. {SCENARIOS[key]}{which}: {outcome.detail}", flush=True)
    except OutOfTime:
        raise
    except Exception as error:
        traceback.print_exc()
        for key in keys:
            for target in targets:
                if key != "4" or target != "ceiling":
                    failed = Outcome(None, f"error: {error}")
                    outcomes.setdefault(key, {}).setdefault(target, failed)


def _plots(outcomes: dict[str, dict[str, Outcome]], results: Path) -> None:
    """A PNG for every run, next to its JSON."""
    from loadtest.plot import plot

    for by_target in outcomes.values():
        for outcome in by_target.values():
            for run in outcome.runs:
                if run.report.get("timeline") is not None and "config" in run.report:
                    plot(run.report, str(results / f"{run.name}.png"))


if __name__ == "__main__":
    sys.exit(main())
