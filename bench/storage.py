"""The storing path on one PostgreSQL primary: its ceiling, its bytes, its history reads.

    python -m bench.storage               # the figures docs/scaling.md quotes (about a minute)
    python -m bench.storage --quick       # seconds; what tests/test_bench_storage.py runs
    python -m bench.storage --json FILE   # also write the figures as JSON

Starts a throwaway PostgreSQL (Debian's, on a free port, never the machine's own) with
fsync=on and synchronous_commit=on as production runs, migrates it, then:

1. stores messages through the project's real statement (`Message.objects.store_batch`, one
   statement per batch, committed on its own) at batch sizes 1, 10 and 100 spread over 100
   rooms, from 1 and 4 writer threads (each with its own connection), and reports messages/s,
   PostgreSQL's CPU seconds per 1,000 messages (utime + stime from /proc of every process
   of the server), WAL bytes per message (pg_current_wal_lsn) and statements (commits) per second;
2. bytes per stored message on disk (pg_total_relation_size of web_message / rows);
3. the newest history page of one 1,000-message room (`Message.objects.page_before`, the
   query the history API runs) at two table sizes, seeded with generate_series.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.explain import setup_django
from bench.services import start_postgres

ROOMS = 100
BODY = "x" * 60  # a typical chat line; bytes per message below are for this body
# What production runs (pytest-postgresql's command line passes -F, fsync off: undo it).
DURABLE = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"


@dataclass
class WriteCell:
    batch: int
    writers: int
    messages: int
    seconds: float
    per_second: float
    cpu_s_per_1000: float
    wal_bytes_per_message: float
    commits_per_second: float


@dataclass
class ReadCell:
    rows: int
    bytes_per_message: float
    table_mb: float
    page_ms_median: float
    page_ms_p99: float
    server_ms_median: float
    plan: str


def server_cpu(datadir: Path) -> dict[int, int]:
    """Nanoseconds on a CPU of the postmaster and each process it started (backends, WAL writer...).

    /proc/<pid>/schedstat, not stat's utime and stime: those count whole 10 ms ticks, and a
    backend that mostly waits for fsync is undercounted.
    """
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            on_cpu = int(Path(f"/proc/{entry}/schedstat").read_text().split()[0])
        except OSError:
            continue  # exited meanwhile
        # The command name may hold spaces: the fields after its closing parenthesis.
        pid, ppid = int(entry), int(stat[stat.rindex(")") + 2 :].split()[1])
        if pid == postmaster or ppid == postmaster:
            found[pid] = on_cpu
    return found


def cpu_seconds_since(datadir: Path, before: dict[int, int]) -> float:
    """CPU used since `before` by the processes alive now (an exiting idle backend adds none)."""
    now = server_cpu(datadir)
    return sum(ns - before.get(pid, 0) for pid, ns in now.items()) / 1e9


def scalar(sql: str, params: list[Any] | None = None) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        row = cursor.fetchone()
    if row is None:
        raise RuntimeError(f"no row from {sql}")
    return row[0]


def execute(sql: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql)


def wal_position() -> int:
    """Bytes of WAL written so far."""
    return int(scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))


def seed_rooms() -> tuple[list[int], list[int]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name,"
            " email, is_staff, is_active, date_joined)"
            " SELECT '!', false, 'w' || i, '', '', '', false, true, now()"
            " FROM generate_series(0, %s) i",
            [ROOMS - 1],
        )
        cursor.execute(
            "INSERT INTO web_room (slug, title, private, last_seq, created_at)"
            " SELECT 'w' || i, 'Room ' || i, false, 0, now() FROM generate_series(0, %s) i",
            [ROOMS - 1],
        )
        cursor.execute("SELECT id FROM web_room ORDER BY id")
        rooms = [r[0] for r in cursor.fetchall()]
        cursor.execute("SELECT id FROM auth_user ORDER BY id")
        users = [r[0] for r in cursor.fetchall()]
    return rooms, users


def measure_writes(
    datadir: Path, rooms: list[int], users: list[int], batch: int, writers: int, seconds: float
) -> WriteCell:
    from django.db import connection

    from web.models import Draft, Message

    ready = threading.Barrier(writers + 1)
    stop = threading.Event()
    counts = [0] * writers
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            scalar("SELECT 1")  # open this thread's connection before the clock starts
            ready.wait()
            i = 0
            while not stop.is_set():
                drafts = []
                for _ in range(batch):
                    # Round-robin over the rooms, each writer from its own offset.
                    room = rooms[(n * 37 + i) % len(rooms)]
                    user = users[(n * 11 + i) % len(users)]
                    drafts.append(Draft(room, user, BODY, f"{n}-{batch}-{writers}-{i}"))
                    i += 1
                stored = Message.objects.store_batch(drafts)
                counts[n] += sum(1 for s in stored if isinstance(s, tuple) and s[1])
            ready.wait()  # stopped
            ready.wait()  # keep the connection (its backend's CPU count) until the CPU is read
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            ready.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise errors[0] from None
    wal0 = wal_position()
    cpu0, t0 = server_cpu(datadir), time.perf_counter()
    time.sleep(seconds)
    stop.set()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds_since(datadir, cpu0)
    wal1 = wal_position()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    done = sum(counts)
    if done == 0:
        raise RuntimeError(f"nothing stored at batch {batch}, {writers} writers")
    return WriteCell(
        batch=batch,
        writers=writers,
        messages=done,
        seconds=round(elapsed, 2),
        per_second=round(done / elapsed),
        cpu_s_per_1000=round(cpu / done * 1000, 3),
        wal_bytes_per_message=round((wal1 - wal0) / done),
        commits_per_second=round(done / batch / elapsed),
    )


def grow_to(total: int, users: list[int]) -> None:
    """Add 1,000-message rooms (as the history API sees them) until web_message has `total` rows."""
    from django.db import connection

    have = int(scalar("SELECT count(*) FROM web_message"))
    add_rooms = max(0, (total - have) // 1000)
    if not add_rooms:
        return
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 0")  # the app's limit is for requests, not seeds
        cursor.execute(
            "INSERT INTO web_room (slug, title, private, last_seq, created_at)"
            " SELECT 'g' || i || '-' || %s, 'Room', false, 1000, now()"
            " FROM generate_series(1, %s) i RETURNING id",
            [have, add_rooms],
        )
        new = [r[0] for r in cursor.fetchall()]
        cursor.execute(
            "INSERT INTO web_message (room_id, seq, sender_id, body, client_msg_id, created_at)"
            " SELECT r, s, %s + (s %% %s), %s, 'g' || s, now()"
            " FROM unnest(%s::bigint[]) r, generate_series(1, 1000) s",
            [users[0], len(users), BODY, new],
        )
        cursor.execute("VACUUM ANALYZE web_message")


def measure_reads(room: int, repeats: int) -> ReadCell:
    from django.db import connection

    from web.models import Message

    rows = int(scalar("SELECT count(*) FROM web_message"))
    size = int(scalar("SELECT pg_total_relation_size('web_message')"))
    before = int(scalar("SELECT max(seq) FROM web_message WHERE room_id = %s", [room])) + 1
    page = Message.objects.page_before(room, before, 51)
    timings = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        got = list(page.all())
        timings.append((time.perf_counter() - t0) * 1000)
    if len(got) != min(51, before - 1):
        raise RuntimeError(f"a history page of {len(got)} messages, not 51")
    sql, params = page.query.sql_with_params()
    server = []  # PostgreSQL's own execution time, without the round trip and the ORM
    with connection.cursor() as cursor:
        for _ in range(min(repeats, 50)):
            cursor.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + sql, params)
            lines = [r[0].strip() for r in cursor.fetchall()]
            server.append(float(lines[-1].split()[2]))  # "Execution Time: 0.123 ms"
    plan = " / ".join(line for line in lines if not line.startswith(("Planning", "Execution")))
    timings.sort()
    return ReadCell(
        rows=rows,
        bytes_per_message=round(size / rows),
        table_mb=round(size / 1e6, 1),
        page_ms_median=round(statistics.median(timings), 3),
        page_ms_p99=round(timings[int(len(timings) * 0.99) - 1], 3),
        server_ms_median=round(statistics.median(server), 3),
        plan=plan,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="storage-") as tmp:
        postgres, port = start_postgres(Path(tmp), DURABLE)
        try:
            setup_django(port)
            settings = {
                name: scalar(f"SHOW {name}")
                for name in ("server_version", "fsync", "synchronous_commit", "wal_level")
            }
            if settings["fsync"] != "on" or settings["synchronous_commit"] != "on":
                raise RuntimeError(f"not durable as production: {settings}")
            rooms, users = seed_rooms()
            writes = [
                measure_writes(Path(tmp) / "data", rooms, users, batch, writers, args.seconds)
                for batch in (1, 10, 100)
                for writers in (1, 4)
            ]
            stored = measure_reads(rooms[0], 1)  # bytes per message as the statement stores them
            # The history reads on generate_series rooms of 1,000 messages each.
            execute("TRUNCATE web_message")
            grow_to(args.small, users)
            room = int(scalar("SELECT min(room_id) FROM web_message"))
            reads = [measure_reads(room, args.repeats)]
            t0 = time.perf_counter()
            grow_to(args.large, users)
            seed_seconds = round(time.perf_counter() - t0, 1)
            reads.append(measure_reads(room, args.repeats))
            return {
                "settings": settings,
                "cpus": os.cpu_count(),
                "body_chars": len(BODY),
                "writes": [asdict(w) for w in writes],
                "stored": asdict(stored),
                "reads": [asdict(r) for r in reads],
                "large_seed_seconds": seed_seconds,
            }
        finally:
            postgres.stop()


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| batch | writers | messages/s | PostgreSQL CPU s / 1,000 msg"
        " | WAL bytes / msg | statements (commits) / s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for w in result["writes"]:
        lines.append(
            f"| {w['batch']} | {w['writers']} | {w['per_second']:,} | {w['cpu_s_per_1000']}"
            f" | {w['wal_bytes_per_message']:,} | {w['commits_per_second']:,} |"
        )
    s = result["stored"]
    lines += [
        "",
        f"Stored by the statement above: {s['rows']:,} rows, {s['table_mb']} MB,"
        f" {s['bytes_per_message']} bytes per message ({result['body_chars']}-character bodies).",
        "",
        "| rows in web_message | table + indexes | bytes / message"
        " | newest page (51), median | p99 | of which PostgreSQL executing, median |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["reads"]:
        lines.append(
            f"| {r['rows']:,} | {r['table_mb']} MB | {r['bytes_per_message']}"
            f" | {r['page_ms_median']} ms | {r['page_ms_p99']} ms | {r['server_ms_median']} ms |"
        )
    lines += [
        "",
        f"Plan at {result['reads'][-1]['rows']:,} rows: {result['reads'][-1]['plan']}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.seconds, args.small, args.large, args.repeats = (
        (0.5, 5_000, 20_000, 20) if args.quick else (5.0, 100_000, 1_000_000, 500)
    )
    result = run(args)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
