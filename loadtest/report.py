"""The load test's accounting: per-subscription seq checks, latency statistics, the report.

Pure functions and small classes, no network: the workers feed them, the tests too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

REPORT_VERSION = 1
LATENCY_TARGET_PERCENTILES = (50, 95, 99)


class SeqCheck:
    """The seqs one subscription received, checked against what it should have received.

    A live subscription should receive every seq above `subscribed.last_seq` exactly once
    and in order. Holes are remembered: a hole filled later is out of order, a seq seen
    twice is duplicated, and what is still missing at the end is lost.
    """

    __slots__ = ("base", "duplicated", "holes", "out_of_order", "received", "top")

    def __init__(self) -> None:
        self.base: int | None = None  # seqs above it are expected
        self.top = 0  # the highest seq received (or the base)
        self.holes: set[int] = set()
        self.received = 0
        self.duplicated = 0
        self.out_of_order = 0

    def subscribed(self, last_seq: int | None) -> None:
        """The server's `subscribed.last_seq`: everything after it must arrive."""
        if self.base is None and last_seq is not None:
            self.base = self.top = last_seq

    def add(self, seq: int) -> None:
        self.received += 1
        if self.base is None:
            # No last_seq from the server: the first seq seen starts the stream.
            self.base = self.top = seq - 1
        top = self.top
        if seq == top + 1:
            self.top = seq
        elif seq > top:
            self.holes.update(range(top + 1, seq))
            self.top = seq
        elif seq in self.holes:
            self.holes.discard(seq)
            self.out_of_order += 1
        elif seq <= self.base:
            # Sent after `subscribed` although the subscription started after it.
            self.out_of_order += 1
        else:
            self.duplicated += 1

    def lost(self, last_acked: int) -> int:
        """Seqs up to the room's last acknowledged one that never arrived."""
        if self.base is None:
            return 0
        return len(self.holes) + self.lost_at_end(last_acked)

    def lost_at_end(self, last_acked: int) -> int:
        """The lost seqs above the highest one received: perhaps only late, not skipped."""
        if self.base is None:
            return 0
        return max(0, last_acked - self.top)


@dataclass
class Correctness:
    streams: int = 0
    received: int = 0
    lost: int = 0
    lost_at_end: int = 0  # of `lost`: after each stream's newest seq, maybe still in flight
    duplicated: int = 0
    out_of_order: int = 0
    resyncs: int = 0

    def add_stream(self, check: SeqCheck, last_acked: int) -> None:
        self.streams += 1
        self.received += check.received
        self.lost += check.lost(last_acked)
        self.lost_at_end += check.lost_at_end(last_acked)
        self.duplicated += check.duplicated
        self.out_of_order += check.out_of_order

    def merge(self, other: Correctness) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class Counters:
    """What a worker counts; summed over workers for the progress line and the report."""

    connections: int = 0  # open (and, for subscribers, subscribed)
    failed: int = 0  # never opened or never subscribed
    dropped: int = 0  # closed by the server or the network while in use
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def merge(self, other: Counters) -> None:
        self.connections += other.connections
        self.failed += other.failed
        self.dropped += other.dropped
        self.sent += other.sent
        self.acked += other.acked
        self.delivered += other.delivered
        for code, count in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + count

    def error_count(self) -> int:
        return self.failed + self.dropped + sum(self.errors.values())


def latency_summary(latency_us: npt.NDArray[np.int64]) -> dict[str, float | int | None]:
    """p50/p95/p99/max/mean in milliseconds."""
    if latency_us.size == 0:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ms = latency_us / 1000.0
    p50, p95, p99 = np.percentile(ms, LATENCY_TARGET_PERCENTILES)
    return {
        "count": int(ms.size),
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(ms.max()), 3),
        "mean": round(float(ms.mean()), 3),
    }


def timeline(
    recv_ms: npt.NDArray[np.int64], latency_us: npt.NDArray[np.int64]
) -> list[dict[str, float | int]]:
    """Per-second delivery counts and latency percentiles, by receive time."""
    if recv_ms.size == 0:
        return []
    second = recv_ms // 1000
    order = np.argsort(second, kind="stable")
    second, lat = second[order], latency_us[order] / 1000.0
    edges = np.flatnonzero(np.diff(second)) + 1
    rows = []
    for chunk_s, chunk_lat in zip(np.split(second, edges), np.split(lat, edges), strict=True):
        p50, p99 = np.percentile(chunk_lat, (50, 99))
        rows.append(
            {
                "t": int(chunk_s[0]),
                "delivered": int(chunk_lat.size),
                "p50": round(float(p50), 3),
                "p99": round(float(p99), 3),
                "max": round(float(chunk_lat.max()), 3),
            }
        )
    return rows


def histogram(latency_us: npt.NDArray[np.int64], bins: int = 60) -> dict[str, list[float]]:
    """Log-spaced latency histogram (ms) of the measured deliveries."""
    if latency_us.size == 0:
        return {"edges_ms": [], "counts": []}
    ms = np.maximum(latency_us / 1000.0, 0.001)
    lo, hi = float(ms.min()), float(ms.max())
    edges = np.geomspace(lo, max(hi, lo * 1.01), bins + 1)
    counts, _ = np.histogram(ms, bins=edges)
    return {
        "edges_ms": [round(float(e), 4) for e in edges],
        "counts": [int(c) for c in counts],
    }


class LiveHistogram:
    """A log-bucketed latency histogram: p99 so far for the progress line, in O(buckets)."""

    GROWTH = 1.02  # 2% wide buckets

    def __init__(self) -> None:
        self.counts = np.zeros(1200, dtype=np.int64)  # 1.02**1200 us is far beyond any cap

    def add(self, latency_us: npt.NDArray[np.int64]) -> None:
        if latency_us.size:
            index = np.log(np.maximum(latency_us, 1)) / math.log(self.GROWTH)
            index = np.minimum(index.astype(np.int64), self.counts.size - 1)
            self.counts += np.bincount(index, minlength=self.counts.size)

    def percentile_ms(self, q: float) -> float | None:
        total = int(self.counts.sum())
        if total == 0:
            return None
        bucket = int(np.searchsorted(np.cumsum(self.counts), math.ceil(total * q / 100)))
        return float(self.GROWTH ** (bucket + 1)) / 1000.0


@dataclass(frozen=True)
class Window:
    """The publishing phase, in seconds since the run started; latency counts after warmup."""

    publish_start: float
    measure_start: float
    publish_end: float

    @property
    def measured_seconds(self) -> float:
        return max(self.publish_end - self.measure_start, 1e-9)


def build_report(
    *,
    config: dict[str, Any],
    counters: Counters,
    correctness: Correctness,
    window: Window | None,
    recv_ms: npt.NDArray[np.int64],
    latency_us: npt.NDArray[np.int64],
    ack_us: npt.NDArray[np.int64],
    connect_us: npt.NDArray[np.int64],
    attempted: int,
    failures: dict[str, int],
    aborted: str | None,
    started_at: str,
    elapsed: float,
) -> dict[str, Any]:
    """The JSON report (docs/loadtest.md describes every field)."""
    if window is not None:
        lo, hi = window.measure_start * 1000, window.publish_end * 1000
        measured = (recv_ms >= lo) & (recv_ms < hi)
        in_window = latency_us[measured]
        deliveries_per_s = round(in_window.size / window.measured_seconds, 1)
    else:
        in_window = latency_us[:0]
        deliveries_per_s = 0.0
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "started_at": started_at,
        "elapsed_s": round(elapsed, 2),
        "aborted": aborted,
        "config": config,
        "connections": {
            "attempted": attempted,
            "ok": counters.connections,
            "failed": counters.failed,
            "dropped": counters.dropped,
            "failure_reasons": dict(sorted(failures.items())),
            "connect_ms": latency_summary(connect_us),
        },
        "publish": {
            "sent": counters.sent,
            "acked": counters.acked,
            "ack_ms": latency_summary(ack_us),
        },
        "delivery": {
            "delivered": counters.delivered,
            "measured_s": round(window.measured_seconds, 3) if window else 0.0,
            "deliveries_per_s": deliveries_per_s,
            "latency_ms": latency_summary(in_window),
        },
        "correctness": asdict(correctness),
        "errors": dict(sorted(counters.errors.items())),
        "histogram": histogram(in_window),
        "timeline": timeline(recv_ms, latency_us),
        "window": asdict(window) if window else None,
    }
    report["problems"] = problems(report)
    report["ok"] = not report["problems"]
    return report


def problems(report: dict[str, Any]) -> list[str]:
    """Why the run failed, if it did: anything lost, duplicated, reordered or refused."""
    found = []
    if report["aborted"]:
        found.append(f"aborted: {report['aborted']}")
    conns = report["connections"]
    reasons = conns.get("failure_reasons") or {}
    if conns["failed"] or conns["dropped"]:
        why = ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        found.append(
            f"{conns['failed']} connections failed, {conns['dropped']} dropped"
            + (f" ({why})" if why else "")
        )
    cor = report["correctness"]
    if cor["lost"]:
        found.append(
            f"{cor['lost']} messages lost"
            + (
                f" ({cor['lost_at_end']} of them after the newest seq received: maybe only"
                " later than --drain)"
                if cor["lost_at_end"]
                else ""
            )
        )
    for name in ("duplicated", "out_of_order"):
        if cor[name]:
            found.append(f"{cor[name]} messages {name.replace('_', ' ')}")
    if report["errors"]:
        found.append("error frames: " + ", ".join(f"{k} x{v}" for k, v in report["errors"].items()))
    if report["publish"]["sent"] != report["publish"]["acked"]:
        unacked = report["publish"]["sent"] - report["publish"]["acked"]
        found.append(f"{unacked} publishes never acknowledged")
    return found


def render(report: dict[str, Any]) -> str:
    """The human summary printed at the end of a run."""
    conns, pub, dlv = report["connections"], report["publish"], report["delivery"]
    lat, cor = dlv["latency_ms"], report["correctness"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"connections  ok {conns['ok']}/{conns['attempted']}  failed {conns['failed']}"
        f"  dropped {conns['dropped']}  connect p99 {ms(conns['connect_ms']['p99'])} ms",
        f"publish      sent {pub['sent']}  acked {pub['acked']}"
        f"  ack p50 {ms(pub['ack_ms']['p50'])} p99 {ms(pub['ack_ms']['p99'])} ms",
        f"delivery     {dlv['delivered']} delivered, {dlv['deliveries_per_s']:.0f}/s"
        f" over {dlv['measured_s']:.1f}s after warmup",
        f"latency ms   p50 {ms(lat['p50'])}  p95 {ms(lat['p95'])}  p99 {ms(lat['p99'])}"
        f"  max {ms(lat['max'])}",
        f"correctness  {cor['streams']} streams  lost {cor['lost']}"
        f" ({cor['lost_at_end']} at the end)  duplicated"
        f" {cor['duplicated']}  out of order {cor['out_of_order']}  resyncs {cor['resyncs']}",
    ]
    if conns["failure_reasons"]:
        reasons = conns["failure_reasons"].items()
        lines.append("conn errors  " + ", ".join(f"{k} x{v}" for k, v in reasons))
    if report["errors"]:
        lines.append("errors       " + ", ".join(f"{k} x{v}" for k, v in report["errors"].items()))
    lines.append(
        "result       " + ("OK" if report["ok"] else "FAIL: " + "; ".join(report["problems"]))
    )
    return "\n".join(lines)
