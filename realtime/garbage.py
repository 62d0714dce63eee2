"""Python's cyclic garbage collector, set for a server that holds many sockets.

A full collection walks every object the collector tracks, and it stops the event loop
while it does: with 1,000 subscribed sockets under scenario 3's load (100 rooms, 3,200
messages a second) each took 120-190 ms and came every 3-5 s, longer than the whole
latency budget (p99 <= 100 ms); with 19,000 sockets, 1.2-2.0 s. Measured with
`python -m bench.costs --rate 3200 --rooms 100 --connections 1000 --publishers 20`
(docs/performance.md, "Pauses of the garbage collector").

Under load the full collections come from churn, not garbage: every message's objects
(its publish, future, stored row, frame) live a few milliseconds, so a younger collection
that runs meanwhile promotes them, and Python runs a full collection once the objects
promoted since the last one reach a quarter of those it holds. Three settings, at start-up:
- `gc.freeze()` once the app is loaded (Django, the modules: about 135,000 objects): they
  live as long as the process and no collection walks them again;
- a young collection once the objects made since the last, less those freed, reach 10,000
  (GC_THRESHOLDS[0]; Python's 700). A message's objects are freed by their reference counts,
  but a batch in flight holds thousands at once: at 6,400 messages a second (scenario 3)
  none ran in 15 s, against 100 a second with 700, whose promotions led to full ones;
- a full collection at most every GC_THRESHOLDS[2] collections of the middle generation
  (100 rather than Python's 10): every 20 s or so under that load instead of every 2.

Cyclic garbage is still collected, by the younger collections or at worst up to a full
collection later. `chat_gc_pause_seconds` (by generation) shows what the pauses cost.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from django.conf import settings

from project import metrics

_started = 0.0


def tune() -> None:
    """Freeze what start-up made and set the thresholds (once the app is loaded)."""
    if settings.GC_FREEZE:
        gc.collect()  # anything start-up left in cycles is freed, not frozen for ever
        gc.freeze()
    gc.set_threshold(*settings.GC_THRESHOLDS)
    if _observe not in gc.callbacks:
        gc.callbacks.append(_observe)


def _observe(phase: str, info: dict[str, Any]) -> None:
    """Each collection's pause, by generation (a stop-the-world pause of the event loop)."""
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        metrics.GC_PAUSE[info["generation"]].observe(time.perf_counter() - _started)
