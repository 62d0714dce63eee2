"""Channel layers side by side: one group of N members in one process, M group_sends from another.

    python -m bench.layers [--members 200] [--messages 1000]

Starts a throwaway Redis on a free loopback port and measures, for each layer,
how long the M messages take to reach all N members, and how many never do:
- channels-redis' RedisChannelLayer (the Channels tutorial's layer: a list per
  channel, group_send works per member),
- channels-redis' RedisPubSubChannelLayer (one pub/sub channel per group),
- realtime.layer.ChatChannelLayer through the specification (a queue per member
  channel, as an ordinary consumer uses it),
- realtime.layer.ChatChannelLayer's fanout extension (what the chat consumer uses:
  a Subscription per socket, the frame encoded once per process).
Each layer's members drain their channels concurrently, as consumers do. The
sender and the receiver are two layer instances (two "processes") on one event
loop, so every layer pays the same scheduling; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from bench.services import wait_for_port
from cluster.procs import free_port

DRAIN_WITHIN = 60.0
QUIET = 1.0  # after the last delivery, how long nothing more must arrive


class CountingWriter:
    """Stands in for a socket: counts the frames the fast path writes to it."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def write(self, frame: bytes, text: str) -> bool:
        self.count += 1
        return True

    def flush(self) -> None:
        pass

    def close_now(self, code: int, reason: str) -> bool:
        return True


async def through_channels(make: Callable[[], Any], members: int, messages: int) -> dict[str, Any]:
    receiver, sender = make(), make()
    channels = [await receiver.new_channel() for _ in range(members)]
    for channel in channels:
        await receiver.group_add("bench", channel)
    received = [0] * members
    last = [time.monotonic()]

    async def drain(i: int) -> None:
        while True:
            await receiver.receive(channels[i])
            received[i] += 1
            last[0] = time.monotonic()

    readers = [asyncio.ensure_future(drain(i)) for i in range(members)]
    await asyncio.sleep(0.2)  # pub/sub layers subscribe in the background
    result = await _timed(
        lambda: _send(sender, messages), lambda: sum(received), members * messages, last
    )
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for layer in (receiver, sender):
        with contextlib.suppress(Exception):
            await layer.flush()
    return result


async def through_fanout(url: str, members: int, messages: int) -> dict[str, Any]:
    from realtime.layer import ChatChannelLayer, Subscription

    receiver, sender = ChatChannelLayer(url=url), ChatChannelLayer(url=url)
    writers = [CountingWriter() for _ in range(members)]
    last = [time.monotonic()]
    for writer in writers:
        sub = Subscription("bench", writer, lambda sub: None)
        sub.live = True
        await receiver.join(sub)

    def count() -> int:
        last[0] = time.monotonic()
        return sum(w.count for w in writers)

    async def send() -> None:
        for seq in range(1, messages + 1):
            await sender.group_send("bench", {"type": "chat.message", "seq": seq, "text": "x"})

    result = await _timed(send, count, members * messages, last)
    await receiver.flush()
    await sender.flush()
    return result


async def _send(sender: Any, messages: int) -> None:
    for n in range(messages):
        await sender.group_send("bench", {"type": "chat.message", "text": "x", "n": n})


async def _timed(
    send: Callable[[], Awaitable[None]],
    delivered: Callable[[], int],
    expected: int,
    last: list[float],
) -> dict[str, Any]:
    start = time.monotonic()
    await send()
    deadline = start + DRAIN_WITHIN
    seen, quiet_since = delivered(), time.monotonic()
    while seen < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = delivered()
        if now != seen:
            seen, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since > QUIET:
            break  # nothing more is coming: the rest was lost
    elapsed = max(last[0], quiet_since) - start if seen else float("nan")
    return {
        "delivered": seen,
        "lost": expected - seen,
        "seconds": round(elapsed, 3),
        "deliveries_per_s": round(seen / elapsed) if seen else 0,
    }


async def run(url: str, members: int, messages: int) -> list[tuple[str, dict[str, Any]]]:
    from realtime.layer import ChatChannelLayer

    host_url = url.rsplit("/", 1)[0]
    cases: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        (
            "channels-redis RedisChannelLayer",
            lambda: through_channels(
                lambda: RedisChannelLayer(hosts=[host_url]), members, messages
            ),
        ),
        (
            "channels-redis RedisPubSubChannelLayer",
            lambda: through_channels(
                lambda: RedisPubSubChannelLayer(hosts=[host_url]), members, messages
            ),
        ),
        (
            "ChatChannelLayer, channels (specification)",
            lambda: through_channels(lambda: ChatChannelLayer(url=url), members, messages),
        ),
        ("ChatChannelLayer, fanout extension", lambda: through_fanout(url, members, messages)),
    ]
    return [(name, await case()) for name, case in cases]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    # The project's layer reads its tunables from the settings, and spawns its tasks through
    # the process object, which needs the apps loaded.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed (make services)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="chat-layers-"))
    proc = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, None)
        results = asyncio.run(run(f"redis://127.0.0.1:{port}/0", args.members, args.messages))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{args.members} members, {args.messages} messages (expected deliveries: "
        f"{args.members * args.messages:,})"
    )
    fastest = max(r["deliveries_per_s"] for _, r in results) or 1
    for name, r in results:
        print(
            f"  {name:44} {r['deliveries_per_s']:>10,}/s  lost {r['lost']:>7,}  "
            f"{r['seconds']:>7.2f} s  ({r['deliveries_per_s'] / fastest:.3f}x the fastest)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
