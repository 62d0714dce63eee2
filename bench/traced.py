"""uvicorn with tracemalloc on: `python -m bench.traced APP [uvicorn options]`.

Each SIGUSR1 writes a snapshot (after a full garbage collection) to
$SNAPSHOT_DIR/snapshot-N.bin, N counting from 0. Used by bench/allocations.py.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 12


def main() -> None:
    tracemalloc.start(FRAMES)
    folder = Path(os.environ["SNAPSHOT_DIR"])
    taken = 0

    def snapshot(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        gc.collect()
        tracemalloc.take_snapshot().dump(str(folder / f"snapshot-{taken}.bin"))
        taken += 1

    signal.signal(signal.SIGUSR1, snapshot)
    import uvicorn.main

    sys.argv = ["uvicorn", *sys.argv[1:]]
    uvicorn.main.main()


if __name__ == "__main__":
    main()
