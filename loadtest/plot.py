"""Draw a load-test report: latency over time and the latency histogram, to a PNG.

Also a command: `python -m loadtest.plot REPORT.json OUT.png` redraws a saved report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import matplotlib.pyplot as plt


def plot(report: dict[str, Any], out: str) -> None:
    fig, (over_time, hist) = plt.subplots(2, 1, figsize=(10, 8))
    rows = report["timeline"]
    window = report.get("window")
    if rows:
        t = [r["t"] for r in rows]  # each row is the second [t, t + 1)
        middle = [x + 0.5 for x in t]
        for key, style in (("max", ":"), ("p99", "-"), ("p50", "--")):
            over_time.plot(middle, [r[key] for r in rows], style, label=key)
        over_time.set_yscale("log")
        rate = over_time.twinx()
        rate.bar(
            t, [r["delivered"] for r in rows], width=1.0, align="edge", alpha=0.15, color="grey"
        )
        rate.set_ylabel("deliveries/s")
    if window:
        over_time.axvspan(
            window["publish_start"], window["measure_start"], alpha=0.1, color="orange"
        )
        over_time.axvline(window["publish_end"], color="grey", linewidth=0.8)
    over_time.set_xlabel("seconds since start (shaded: warmup)")
    over_time.set_ylabel("latency ms")
    over_time.set_title(_title(report))
    if rows:
        over_time.legend(loc="upper left")

    edges, counts = report["histogram"]["edges_ms"], report["histogram"]["counts"]
    if counts:
        hist.stairs(counts, edges, fill=True)
        hist.set_xscale("log")
        lat = report["delivery"]["latency_ms"]
        for key in ("p50", "p99"):
            if lat[key] is not None:
                hist.axvline(lat[key], color="red", linestyle="--", linewidth=0.8)
                hist.annotate(key, (lat[key], max(counts)), color="red")
    hist.set_xlabel("end-to-end latency ms (measured window)")
    hist.set_ylabel("deliveries")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _title(report: dict[str, Any]) -> str:
    cfg, dlv, cor = report["config"], report["delivery"], report["correctness"]
    p99 = dlv["latency_ms"]["p99"]
    return (
        f"{cfg['connections']} conns, {cfg['rooms']} rooms, {cfg['rate']:g} msg/s: "
        f"{dlv['deliveries_per_s']:,.0f} deliveries/s, "
        f"p99 {'-' if p99 is None else f'{p99:.1f}'} ms, lost {cor['lost']}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m loadtest.plot REPORT.json OUT.png")
    plot(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])
