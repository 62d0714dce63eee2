"""Presence cost: a room of N members all joining, batched diffs against one diff per join.

    python -m bench.presence [--members 1000] [--spread 2.0] [--append docs/benchmarks.md]

Starts a throwaway Redis on a free loopback port. N sockets (counting writers on
the project's channel layer, as in bench/layers.py) subscribe to one room, one
after another over `--spread` seconds, each through `Presence.enter` (one Lua
script round trip to Redis, and the `online` snapshot it answers), then:
- batched: the process's presence loop sends one `presence` frame per room every
  PRESENCE_FLUSH_SECONDS with everyone who joined since (what the server does);
- per join: a flush after every join, i.e. one diff per join, as a naive
  implementation would send it.
Reported: presence events published, frames and bytes written to the sockets
(diffs; the snapshots apart), and the time until the last diff was delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.layers import CountingWriter
from bench.services import wait_for_port
from cluster.procs import free_port

QUIET = 1.0  # seconds without a new frame that end a run


class SizingWriter(CountingWriter):
    __slots__ = ("bytes",)

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def write(self, frame: bytes, text: str) -> bool:
        self.bytes += len(text)
        return super().write(frame, text)


async def scenario(members: int, spread: float, per_join: bool, room_id: int) -> dict[str, Any]:
    from channels.layers import get_channel_layer

    from realtime import presence as presence_module
    from realtime.groups import room_group
    from realtime.layer import Subscription
    from realtime.presence import Presence

    layer = get_channel_layer()
    tracker = Presence(f"bench{room_id}", background=not per_join)
    published = [0]
    real_send = presence_module.send_changes

    async def counting_send(changes: Sequence[Any]) -> None:
        published[0] += len(changes)
        await real_send(changes)

    presence_module.send_changes = counting_send
    writers: list[SizingWriter] = []
    snapshot_bytes = 0
    start = time.monotonic()
    try:
        for i in range(members):
            writer = SizingWriter()
            sub = Subscription(room_group(room_id), writer, lambda sub: None)
            sub.live = True
            await layer.join(sub)
            writers.append(writer)
            online = await tracker.enter(object(), room_id, "bench", f"member{i:05}")
            snapshot_bytes += len(str(online))
            if per_join:
                await tracker.tick(beat=False)
            # Joins arrive over `spread` seconds, as people open the room.
            await asyncio.sleep(max(0.0, start + spread * (i + 1) / members - time.monotonic()))
        joined_at = time.monotonic()
        frames, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < QUIET:
            await asyncio.sleep(0.05)
            now_frames = sum(w.count for w in writers)
            if now_frames != frames:
                frames, last_change = now_frames, time.monotonic()
    finally:
        presence_module.send_changes = real_send
    if tracker.loop_task is not None:
        tracker.loop_task.cancel()
    if tracker.store is not None:
        await tracker.store.aclose()
    return {
        "events": published[0],
        "frames": frames,
        "bytes": sum(w.bytes for w in writers),
        "snapshot_bytes": snapshot_bytes,
        "joins_s": joined_at - start,
        "delivered_s": last_change - start,
    }


async def run(members: int, spread: float) -> list[tuple[str, dict[str, Any]]]:
    from realtime.process import close_process

    await scenario(20, 0.1, True, 3)  # warm up: connections, scripts, the room's feed
    per_join = await scenario(members, spread, True, 2)
    batched = await scenario(members, spread, False, 1)
    results = [("batched (one frame per room per flush)", batched), ("one diff per join", per_join)]
    await close_process()
    return results


def _markdown(title: str, args: argparse.Namespace, results: list[tuple[str, Any]]) -> str:
    command = f"python -m bench.presence --members {args.members} --spread {args.spread}"
    rows = "".join(
        f"| {name} | {r['events']:,} | {r['frames']:,} | {r['bytes'] / 1e6:.1f} MB "
        f"| {r['delivered_s']:.1f} s |\n"
        for name, r in results
    )
    return (
        f"\n## Presence: a room of {args.members:,} members joining\n\n"
        f"`{command}`: {title}. Why the diffs are batched: docs/architecture.md.\n\n"
        "| | presence events | frames written | diff bytes | last diff delivered |\n"
        "| --- | ---: | ---: | ---: | ---: |\n" + rows
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=2.0, help="seconds the joins take")
    parser.add_argument("--append", help="a Markdown file to add the table to (make bench)")
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed (make services)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="chat-presence-"))
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    # The action's on_commit asks a database whether a transaction is open: a scratch SQLite.
    os.environ["SQLITE_PATH"] = str(workdir / "bench.sqlite3")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.conf import settings

    proc = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, None)
        results = asyncio.run(run(args.members, args.spread))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    title = (
        f"{args.members} members joining one room over {args.spread} s "
        f"(PRESENCE_FLUSH_SECONDS={settings.PRESENCE_FLUSH_SECONDS}); diffs only, "
        "the snapshots apart"
    )
    print(title)
    for name, r in results:
        print(
            f"  {name:40} events {r['events']:>6,}  frames {r['frames']:>9,}  "
            f"diff bytes {r['bytes']:>12,}  snapshot bytes {r['snapshot_bytes']:>10,}  "
            f"joins {r['joins_s']:.2f} s  last diff delivered {r['delivered_s']:.2f} s"
        )
    if args.append:
        with open(args.append, "a") as out:
            out.write(_markdown(title, args, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
