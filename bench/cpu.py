"""CPU time of server processes over a measured window, read from /proc.

Why /proc and not psutil: two numbers per process (utime and stime in
/proc/<pid>/stat) are all a benchmark needs, and reading them costs nothing
while the load runs. A process tree (a PostgreSQL postmaster and its
backends, uvicorn and its workers) is counted whole: the pids are found
again at each reading, and a child that exited inside the window counts
what it used up to the last reading it was seen in.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process so far (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = raw[raw.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / TICKS


def machine_seconds() -> float:
    """CPU seconds all cores spent busy so far (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(n) for n in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICKS


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (one level)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(child) for child in listing.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def tree(pid: int) -> list[int]:
    """`pid` and every descendant of it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children(current))
    return found


@dataclass
class CpuMeter:
    """CPU seconds used by named groups of process trees between `start()` and `read()`.

    meter = CpuMeter({"server": [pid], "postgres": [pg_pid]}); meter.start(); ...load...;
    used = meter.read()  ->  {"server": 1.92, "postgres": 0.71}
    """

    groups: Mapping[str, Iterable[int]]
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _seen: dict[str, dict[int, float]] = field(default_factory=dict)  # the last reading per pid

    def _sample(self) -> dict[str, dict[int, float]]:
        return {
            name: {pid: cpu_seconds(pid) for root in roots for pid in tree(root)}
            for name, roots in self.groups.items()
        }

    def start(self) -> None:
        self._start = self._sample()
        self._seen = {name: dict(pids) for name, pids in self._start.items()}

    def poll(self) -> None:
        """Take a reading: a process that exits before `read()` counts up to here."""
        for name, pids in self._sample().items():
            self._seen.setdefault(name, {}).update(pids)

    def read(self) -> dict[str, float]:
        """Seconds used per group since `start()`; processes born since count from zero."""
        self.poll()
        used = {}
        for name, pids in self._seen.items():
            before = self._start.get(name, {})
            used[name] = sum(
                max(seconds - before.get(pid, 0.0), 0.0) for pid, seconds in pids.items()
            )
        return used


def measure_window(
    meter: CpuMeter,
    ready: Path,
    proc: subprocess.Popen[bytes],
    skip_s: float,
    window_s: float,
    poll_s: float = 0.02,
    opened: Callable[[], None] | None = None,
    closed: Callable[[], None] | None = None,
) -> dict[str, float]:
    """CPU seconds per group over a generator's measured window, and the window's length.

    The window opens `skip_s` after the generator touches `ready` (its connections are up)
    and lasts `window_s`; {} when the generator ends before the window closes. `opened` is
    called as it opens (to read other counters, or start a profiler), `closed` as it closes
    (to read them again before the generator's connections close).
    """
    while not ready.exists():
        if proc.poll() is not None:
            return {}
        time.sleep(poll_s)
    time.sleep(skip_s)
    if opened is not None:
        # What it reads takes a while on a busy machine: the window still closes when the
        # generator stops publishing, not after (its connections closing would count).
        began_opening = time.monotonic()
        opened()
        window_s -= time.monotonic() - began_opening
    meter.start()
    began, machine = time.monotonic(), machine_seconds()
    while (left := began + window_s - time.monotonic()) > 0:
        if proc.poll() is not None:
            return {}
        meter.poll()  # the generator's workers exit as soon as publishing ends
        time.sleep(min(left, 0.1))
    used = meter.read()
    if closed is not None:
        closed()
    # The whole machine's busy seconds too: what the groups do not explain is other work
    # sharing the cores (another benchmark, say), which makes the step's numbers suspect.
    used["machine"] = machine_seconds() - machine
    used["window_s"] = time.monotonic() - began
    return used


def us_per_delivery(
    cpu: Mapping[str, float], groups: Iterable[str], deliveries_per_s: float
) -> float | None:
    """Microseconds of CPU the `groups` together used per delivery, from `measure_window`."""
    if not cpu or deliveries_per_s <= 0 or cpu.get("window_s", 0) <= 0:
        return None
    return sum(cpu[g] for g in groups) / cpu["window_s"] / deliveries_per_s * 1e6


def others_cores(cpu: Mapping[str, float]) -> float | None:
    """Cores busy, on average over the window, with work outside the measured groups."""
    if "machine" not in cpu or cpu.get("window_s", 0) <= 0:
        return None
    ours = sum(v for k, v in cpu.items() if k not in ("machine", "window_s"))
    return max(cpu["machine"] - ours, 0.0) / cpu["window_s"]


def wait_for_quiet(cores: float = 0.5, patience_s: float = 30.0, sample_s: float = 0.5) -> float:
    """Wait, up to `patience_s`, until the machine is busier than `cores` no more; the last
    reading. On a shared machine another benchmark's load would be counted as ours."""
    deadline = time.monotonic() + patience_s
    while True:
        before = machine_seconds()
        time.sleep(sample_s)
        busy = (machine_seconds() - before) / sample_s
        if busy <= cores or time.monotonic() >= deadline:
            return busy


@dataclass
class QuietWaits:
    """`wait_for_quiet` before each step, within a budget for the whole run: on a machine
    that stays busy, a run waits a few minutes in all, not half a minute per step."""

    budget_s: float = 240.0
    per_step_s: float = 30.0

    def __call__(self) -> float:
        began = time.monotonic()
        busy = wait_for_quiet(patience_s=min(self.per_step_s, self.budget_s))
        self.budget_s = max(self.budget_s - (time.monotonic() - began), 0.0)
        return busy
