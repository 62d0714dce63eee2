"""`make bench`: start Redis, PostgreSQL and the three targets on loopback, run the scenarios,
write docs/benchmarks.md.

    python -m bench.run [--quick] [--scenarios 1,2,3,4,5] [--targets floor,product,ceiling]
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench.scenarios import FULL, QUICK, TARGETS, Bench, Outcome
from bench.services import ROOT, Services, raise_open_files_limit
from bench.writeup import SCENARIOS, git_state, render

USERS = 10_000
ROOMS = 100


class OutOfTime(Exception):
    pass


def _out_of_time(signum: int, frame: FrameType | None) -> None:
    raise OutOfTime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="the 3-minute smoke version")
    parser.add_argument("--scenarios", default="1,2,3,4,5")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--command", help="the command to show in the write-up")
    parser.add_argument("--max-minutes", type=float, help="hard cap (default 30, quick 6)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    scenarios = [s for s in args.scenarios.split(",") if s in SCENARIOS]
    targets = [t for t in args.targets.split(",") if t in TARGETS]
    command = args.command or "python -m bench.run " + shlex.join(argv or sys.argv[1:])

    raise_open_files_limit()
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(int((args.max_minutes or (6 if plan.quick else 30)) * 60))
    started = datetime.now(UTC)
    code = git_state()  # other work may commit while the benchmark runs
    t0 = time.monotonic()
    results = ROOT / "bench" / "results" / started.strftime("%Y%m%d-%H%M%S")
    results.mkdir(parents=True)
    services = Services(Path(tempfile.mkdtemp(prefix="chat-bench-")), results)
    outcomes: dict[str, dict[str, Outcome]] = {}
    provisioning = "?"
    try:
        print(f"bench: services in {services.tmp}, reports in {results}", flush=True)
        services.start()
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
        for target in targets:
            print(f"bench: {target}", flush=True)
            try:
                for key, outcome in bench.target(target, scenarios):
                    outcomes.setdefault(key, {})[target] = outcome
                    print(f"bench:   {key}. {SCENARIOS[key]}: {outcome.detail}", flush=True)
            except OutOfTime:
                raise
            except Exception as error:
                traceback.print_exc()
                for key in scenarios:
                    if key != "4" or target != "ceiling":
                        failed = Outcome(None, f"error: {error}")
                        outcomes.setdefault(key, {}).setdefault(target, failed)
    except OutOfTime:
        print("bench: out of time; writing what was measured", flush=True)
    finally:
        signal.alarm(0)
        services.stop()
    _plots(outcomes, results)
    text = render(
        plan, command, started, time.monotonic() - t0, outcomes, provisioning, results, code
    )
    Path(args.out).write_text(text)
    print(f"bench: wrote {args.out} in {(time.monotonic() - t0) / 60:.1f} min", flush=True)
    return 0


def _plots(outcomes: dict[str, dict[str, Outcome]], results: Path) -> None:
    """A PNG for every run, next to its JSON."""
    from realtime.loadtest.plot import plot

    for by_target in outcomes.values():
        for outcome in by_target.values():
            for run in outcome.runs:
                if run.report.get("timeline") is not None and "config" in run.report:
                    plot(run.report, str(results / f"{run.name}.png"))


if __name__ == "__main__":
    sys.exit(main())
