"""`chat-loadtest`: load-test a chat deployment over its websocket (docs/loadtest.md)."""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
from pathlib import Path

from loadtest.config import Config
from loadtest.coordinator import Coordinator
from loadtest.report import render

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chat-loadtest",
        description="Open N websockets over M rooms, publish at R msg/s for T seconds, and "
        "report throughput, end-to-end latency and lost/duplicated/out-of-order messages.",
    )
    p.add_argument("--url", required=True, help="the websocket, e.g. wss://chat.example.com/ws/")
    p.add_argument("--publish-url", help="where publishers connect (default: --url)")
    p.add_argument("--tokens", help="JSON from `manage.py provision_load` (tokens and rooms)")
    p.add_argument("--rooms", type=int, help="use the first M rooms (default: all in --tokens)")
    p.add_argument(
        "--room-prefix", default="load", help="room names PREFIX-i when --tokens has none"
    )
    p.add_argument("--connections", type=int, default=100, help="subscribers (default 100)")
    p.add_argument("--connect-rate", type=float, default=500.0, help="new connections/s")
    p.add_argument(
        "--max-pending",
        type=int,
        default=0,
        help="at most this many handshakes in flight (default: no limit)",
    )
    p.add_argument("--publishers", type=int, default=1, help="publishing connections")
    p.add_argument("--rate", type=float, default=10.0, help="messages/s, all publishers")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="publishing seconds not measured")
    p.add_argument("--drain", type=float, default=5.0, help="max seconds to wait for stragglers")
    p.add_argument("--body-size", type=int, default=64, help="message body characters")
    p.add_argument("--procs", type=int, default=1, help="worker processes")
    p.add_argument("--connect-timeout", type=float, default=15.0, help="seconds per connection")
    p.add_argument("--max-seconds", type=float, help="hard cap on the whole run")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--plot", help="draw latency over time and its histogram to this PNG")
    p.add_argument("--ready-file", help="touch this file once every connection is ready")
    p.add_argument("--insecure", action="store_true", help="skip TLS certificate checks")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def config_from(args: argparse.Namespace) -> Config:
    tokens: list[str] = []
    rooms: list[str] = []
    if args.tokens:
        data = json.loads(Path(args.tokens).read_text())
        tokens, rooms = list(data.get("tokens", [])), list(data.get("rooms", []))
    count = args.rooms if args.rooms is not None else len(rooms) or 1
    if len(rooms) < count:
        rooms += [f"{args.room_prefix}-{i}" for i in range(len(rooms), count)]
    rooms = rooms[:count]
    for name, value in (("connections", args.connections), ("procs", args.procs)):
        if value < 1:
            raise ValueError(f"--{name} must be at least 1")
    if args.publishers < 0 or args.rate < 0 or args.body_size > 4000:
        raise ValueError("--publishers and --rate must be >= 0, --body-size at most 4000")
    if args.rate > 0 and args.publishers == 0:
        raise ValueError("--rate needs at least one publisher")
    if args.connect_rate <= 0:
        raise ValueError("--connect-rate must be positive")
    total = args.connections + args.publishers
    # A cap on handshakes in flight can make connecting slower than --connect-rate: allow
    # for a server that completes as few as 50 handshakes a second.
    connect_s = total / (min(args.connect_rate, 50) if args.max_pending else args.connect_rate)
    expected = (
        connect_s
        + args.connect_timeout
        + args.warmup
        + args.duration
        # acks, then stragglers, may each take up to --drain
        + 2 * args.drain
    )
    return Config(
        url=args.url,
        publish_url=args.publish_url or args.url,
        rooms=rooms,
        connections=args.connections,
        connect_rate=args.connect_rate,
        max_pending=max(args.max_pending, 0),
        publishers=args.publishers,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        body_size=max(args.body_size, 24),
        procs=min(args.procs, total),
        connect_timeout=args.connect_timeout,
        max_seconds=args.max_seconds or expected + 30,
        insecure=args.insecure,
        ready_file=args.ready_file,
        tokens=tokens,
    )


def raise_open_files_limit() -> None:
    """Each connection is a file descriptor: take as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C (SIGINT) stops the run and reports what it saw, even when this process was
    # started with SIGINT ignored, as a non-interactive shell starts a background job: the
    # ignored disposition survives exec, and Python then installs no handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parser().parse_args(argv)
    try:
        config = config_from(args)
    except (ValueError, OSError) as error:
        print(f"chat-loadtest: {error}", file=sys.stderr)
        return EXIT_USAGE
    raise_open_files_limit()
    report = Coordinator(config, progress=None if args.quiet else sys.stderr).run()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        from loadtest.plot import plot  # matplotlib is slow to import: only when asked

        plot(report, args.plot)
    print(render(report))
    return EXIT_OK if report["ok"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
