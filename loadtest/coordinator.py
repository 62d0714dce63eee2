"""The parent process: forks the workers, keeps them in step, prints progress, merges results."""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from loadtest.config import Config
from loadtest.report import (
    Correctness,
    Counters,
    LiveHistogram,
    Window,
    build_report,
)
from loadtest.worker import WorkerResult, worker_main

START_DELAY_S = 0.3  # time for the "start" message to reach every worker
STOP_GRACE_S = 5.0  # how long stopped workers get to send what they have


@dataclass
class _Samples:
    recv_ms: list[npt.NDArray[np.int32]] = field(default_factory=list)
    latency_us: list[npt.NDArray[np.int32]] = field(default_factory=list)

    def add(self, recv: bytes, lat: bytes, hist: LiveHistogram) -> None:
        if lat:
            latency = np.frombuffer(lat, dtype=np.int32)
            self.recv_ms.append(np.frombuffer(recv, dtype=np.int32))
            self.latency_us.append(latency)
            hist.add(latency.astype(np.int64))

    def arrays(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        return _concat(self.recv_ms), _concat(self.latency_us)


def _concat(parts: list[npt.NDArray[np.int32]]) -> npt.NDArray[np.int64]:
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts).astype(np.int64)


class Coordinator:
    def __init__(self, config: Config, progress: TextIO | None = sys.stderr) -> None:
        self.config = config
        self.progress = progress
        self.t0_ns = time.monotonic_ns()
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.pipes: dict[int, Pipe] = {}  # reports from worker k
        self.command_pipes: dict[int, Pipe] = {}  # commands to worker k
        self.latest: dict[int, Counters] = {}
        self.samples = _Samples()
        self.hist = LiveHistogram()
        self.ready: set[int] = set()
        self.acked: dict[int, dict[str, int]] = {}
        self.results: dict[int, WorkerResult | None] = {}
        self.window: Window | None = None
        self.aborted: str | None = None
        self._stopped_at: float | None = None
        self._last_print = (0.0, 0)

    def now(self) -> float:
        """Seconds since the run started."""
        return (time.monotonic_ns() - self.t0_ns) / 1e9

    def run(self) -> dict[str, Any]:
        cfg = self.config
        # Fork before any event loop exists; the workers inherit the config as it is.
        ctx = multiprocessing.get_context("fork")
        procs = []
        for k in range(cfg.procs):
            commands_in, commands_out = ctx.Pipe(duplex=False)
            reports_in, reports_out = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=worker_main,
                args=(cfg, k, commands_in, reports_out, self.t0_ns),
                name=f"loadtest-{k}",
            )
            proc.start()
            commands_in.close()
            reports_out.close()
            self.pipes[k] = reports_in
            self.command_pipes[k] = commands_out
            procs.append(proc)
        try:
            self._loop()
        except KeyboardInterrupt:
            self.aborted = "interrupted"
            self._stop_all()
            self._loop()
        finally:
            for proc in procs:
                proc.join(timeout=2)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        return self._report()

    def _loop(self) -> None:
        deadline = self.config.max_seconds
        next_print = 1.0
        while len(self.results) < len(self.pipes):
            now = self.now()
            if now >= deadline:
                if self.aborted is None:
                    self.aborted = f"hard cap of {self.config.max_seconds:g}s reached"
                    self._stop_all()
                    deadline = now + STOP_GRACE_S
                    continue
                for k in self.pipes:
                    self.results.setdefault(k, None)  # gave up on it
                break
            waiting = [p for k, p in self.pipes.items() if k not in self.results]
            for pipe in wait(waiting, timeout=max(0.0, min(next_print, deadline) - now)):
                assert isinstance(pipe, Pipe)  # noqa: S101 -- wait() returns what it was given
                k = next(k for k, p in self.pipes.items() if p is pipe)
                try:
                    message = pipe.recv()
                except (EOFError, OSError):
                    self._worker_gone(k)
                    continue
                self._handle(k, message)
            if self.now() >= next_print:
                self._print_progress()
                next_print = int(self.now()) + 1.0
        self._print_progress(final=True)

    def _handle(self, k: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "tick":
            self.latest[k] = message[1]
            self.samples.add(message[2], message[3], self.hist)
        elif kind == "ready":
            self.ready.add(k)
            self._maybe_start()
        elif kind == "acked":
            self.acked[k] = message[1]
            self._maybe_finalize()
        elif kind == "result":
            result: WorkerResult = message[1]
            self.results[k] = result
            self.latest[k] = result.counters
            self.samples.add(result.recv_ms, result.latency_us, self.hist)

    def _alive(self) -> list[int]:
        return [k for k in self.pipes if self.results.get(k, True) is not None]

    def _maybe_start(self) -> None:
        alive = self._alive()
        if self.window is not None or not all(k in self.ready for k in alive):
            return
        cfg = self.config
        start = self.now() + START_DELAY_S
        self.window = Window(start, start + cfg.warmup, start + cfg.warmup + cfg.duration)
        start_ns = self.t0_ns + int(self.window.publish_start * 1e9)
        end_ns = self.t0_ns + int(self.window.publish_end * 1e9)
        for k in alive:
            self._tell(k, ("start", start_ns, end_ns))
        if cfg.ready_file:
            Path(cfg.ready_file).write_text(self.started_at + "\n")

    def _maybe_finalize(self) -> None:
        alive = self._alive()
        if not all(k in self.acked for k in alive):
            return
        merged: dict[str, int] = {}
        for rooms in self.acked.values():
            for room, seq in rooms.items():
                merged[room] = max(seq, merged.get(room, 0))
        drain_deadline_ns = time.monotonic_ns() + int(self.config.drain * 1e9)
        for k in alive:
            self._tell(k, ("final", merged, drain_deadline_ns))

    def _worker_gone(self, k: int) -> None:
        if k in self.results:
            return
        self.results[k] = None
        if self.aborted is None:
            self.aborted = f"worker {k} died"
        # Let the others move on without it.
        self._maybe_start()
        self._maybe_finalize()

    def _tell(self, k: int, message: tuple[Any, ...]) -> None:
        # A worker that stopped may have sent its result and gone already; one that died
        # shows up as the end of its reports pipe, which is where it is handled.
        with contextlib.suppress(OSError):
            self.command_pipes[k].send(message)

    def _stop_all(self) -> None:
        self._stopped_at = self.now()
        for k in self._alive():
            if k not in self.results:
                self._tell(k, ("stop",))

    def _totals(self) -> Counters:
        total = Counters()
        for counters in self.latest.values():
            total.merge(counters)
        return total

    def _print_progress(self, final: bool = False) -> None:
        if self.progress is None:
            return
        now, total = self.now(), self._totals()
        last_t, last_delivered = self._last_print
        rate = (total.delivered - last_delivered) / max(now - last_t, 1e-9)
        self._last_print = (now, total.delivered)
        p99 = self.hist.percentile_ms(99)
        attempted = self.config.connections + self.config.publishers
        line = (
            f"[{now:6.1f}s] conns {total.connections}/{attempted}"
            f" | sent {total.sent} acked {total.acked}"
            f" | delivered {total.delivered} ({rate:,.0f}/s)"
            f" | p99 so far {'-' if p99 is None else f'{p99:.1f}'} ms"
            f" | errors {total.error_count()}"
        )
        self.progress.write(line + "\n")
        self.progress.flush()

    def _report(self) -> dict[str, Any]:
        counters, correctness = Counters(), Correctness()
        failures: dict[str, int] = {}
        ack: list[npt.NDArray[np.int32]] = []
        connect: list[npt.NDArray[np.int32]] = []
        for k, result in self.results.items():
            if result is None:
                counters.merge(self.latest.get(k, Counters()))
                continue
            counters.merge(result.counters)
            correctness.merge(result.correctness)
            ack.append(np.frombuffer(result.ack_us, dtype=np.int32))
            connect.append(np.frombuffer(result.connect_us, dtype=np.int32))
            for reason, count in result.failures.items():
                failures[reason] = failures.get(reason, 0) + count
        recv_ms, latency_us = self.samples.arrays()
        window = self.window
        if window is not None and self.aborted is not None and self._stopped_at is not None:
            # Measure up to the stop, not to where publishing would have ended.
            end = max(min(window.publish_end, self._stopped_at), window.publish_start)
            window = Window(window.publish_start, min(window.measure_start, end), end)
        report = build_report(
            config=self.config.public(),
            counters=counters,
            correctness=correctness,
            window=window,
            recv_ms=recv_ms,
            latency_us=latency_us,
            ack_us=_concat(ack),
            connect_us=_concat(connect),
            attempted=self.config.connections + self.config.publishers,
            failures=failures,
            aborted=self.aborted,
            started_at=self.started_at,
            elapsed=self.now(),
        )
        return report
