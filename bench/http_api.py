"""The HTTP API under load with wrk: the cache and the database pool, off and on.

    python -m bench.http_api [--quick] [--concurrency 16] [--duration 8]
        [--append docs/benchmarks.md]

Starts a throwaway PostgreSQL and Redis (bench/services.py) and `--users` token users, each a
member of `--rooms` public rooms (one message each, posted over HTTP). Then, per configuration
(the cache off or in Redis, the pool off or on), one uvicorn process with the production flags
and, one after another, `--duration` seconds of wrk (Debian's package, `make services`) from
`--concurrency` keep-alive connections against each endpoint:

- publish: POST /api/rooms/<slug>/messages with a fresh client_msg_id (users and rooms in turn);
- room list: GET /api/rooms (users in turn);
- history: GET /api/rooms/<slug>/messages?before=N&limit=50, N at random in the rooms' history.

Publishing runs first so the later configurations read deeper history; the history's range is
read from the room list before each history run. Any answer other than 2xx fails the run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.room_list import Api, spawn_with
from bench.services import Services

ENDPOINTS = ("publish", "room list", "history")
ROUTES = {  # as chat_db_queries_per_request labels them (web/middleware.py)
    "publish": "api/rooms/<slug:slug>/messages",
    "room list": "api/rooms",
    "history": "api/rooms/<slug:slug>/messages",
}
CONFIGS = {  # name: (cache, pool)
    "off/off": (False, False),
    "cache only": (True, False),
    "pool only": (False, True),
    "on/on": (True, True),
}
POOL_ON = {"DATABASE_POOL": "1", "DATABASE_POOL_MIN_SIZE": "4", "DATABASE_POOL_MAX_SIZE": "10"}
POOL_OFF = {"DATABASE_POOL": "0"}  # a new PostgreSQL connection per request

# wrk's request() builds each request; done() prints the numbers as one JSON line.
LUA = """
local tokens = {%(tokens)s}
local rooms = {%(rooms)s}
local mode, run, maxseq = "%(mode)s", "%(run)s", %(maxseq)d
local n = 0
math.randomseed(%(seed)d)

request = function()
  n = n + 1
  local headers = {
    ["Authorization"] = "Bearer " .. tokens[n %% #tokens + 1],
    ["Content-Type"] = "application/json",
  }
  if mode == "publish" then
    local room = rooms[math.floor(n / #tokens) %% #rooms + 1]
    local body = '{"body": "load", "client_msg_id": "' .. run .. '-' .. n .. '"}'
    return wrk.format("POST", "/api/rooms/" .. room .. "/messages", headers, body)
  elseif mode == "history" then
    local room = rooms[n %% #rooms + 1]
    local before = math.random(2, maxseq)
    return wrk.format("GET", "/api/rooms/" .. room .. "/messages?limit=50&before=" .. before,
      headers)
  end
  return wrk.format("GET", "/api/rooms", headers)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d, ' ..
    '"errors": %%d, "status_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def wrk(port: int, script: Path, args: argparse.Namespace, seconds: int) -> dict[str, Any]:
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{args.concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(lines[-1][4:])
    if result["errors"] or result["status_errors"]:
        raise RuntimeError(
            f"wrk saw {result['errors']} socket errors and {result['status_errors']} answers "
            f"other than 2xx/3xx ({script.name}); see the server log"
        )
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def queries(port: int, route: str) -> tuple[float, float]:
    """(sum, count) of chat_db_queries_per_request for a route, from the server's /metrics."""
    api = Api(port, "")
    status, text = api.call("GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    found = []
    for kind in ("sum", "count"):
        pattern = rf'chat_db_queries_per_request_{kind}{{route="{re.escape(route)}"}} (\S+)'
        match = re.search(pattern, text.decode())
        found.append(float(match.group(1)) if match else 0.0)
    return found[0], found[1]


def lua(path: Path, mode: str, fixture: dict[str, Any], run: str, maxseq: int = 2) -> Path:
    def quoted(items: list[str]) -> str:
        return ", ".join(f'"{item}"' for item in items)

    path.write_text(
        LUA
        % {
            "tokens": quoted(fixture["tokens"]),
            "rooms": quoted(fixture["rooms"]),
            "mode": mode,
            "run": run,
            "maxseq": max(maxseq, 2),
            "seed": int(time.time()),
        }
    )
    return path


def check(port: int, fixture: dict[str, Any]) -> int:
    """One request of each kind, with its answer shown if wrong; the rooms' least last_seq."""
    api = Api(port, fixture["tokens"][0])
    room = fixture["rooms"][0]
    fresh = {"body": "check", "client_msg_id": str(time.time_ns())}
    calls: list[tuple[str, str, Any]] = [
        ("POST", f"/api/rooms/{room}/messages", fresh),
        ("GET", f"/api/rooms/{room}/messages?limit=50&before=2", None),
        ("GET", "/api/rooms", None),
    ]
    for method, path, body in calls:
        status, answer = api.call(method, path, body)
        if status not in (200, 201):
            raise RuntimeError(f"{method} {path} answered {status}: {answer[:300]!r}")
    rooms = json.loads(answer)["rooms"]
    return min(int(r["last_seq"]) for r in rooms if r["slug"] in fixture["rooms"])


def configuration(
    services: Services, name: str, fixture: dict[str, Any], args: argparse.Namespace, work: Path
) -> dict[str, dict[str, Any]]:
    cache, pool = CONFIGS[name]
    env = dict(POOL_ON if pool else POOL_OFF)
    if cache:
        env["CACHE_URL"] = f"redis://127.0.0.1:{services.redis_port}/1"
    server = spawn_with(services, env)
    try:
        check(server.port, fixture)
        run = f"{name.replace('/', '').replace(' ', '')}-{time.time_ns()}"
        if args.warmup:  # connections, the pool, the cache, the interpreter's caches
            wrk(server.port, lua(work / "warm.lua", "room list", fixture, run), args, args.warmup)
        results = {}
        for mode in ENDPOINTS:
            maxseq = check(server.port, fixture) if mode == "history" else 2
            script = lua(work / f"{mode.replace(' ', '-')}.lua", mode, fixture, run, maxseq)
            before = queries(server.port, ROUTES[mode])
            results[mode] = wrk(server.port, script, args, args.duration)
            after = queries(server.port, ROUTES[mode])
            results[mode]["queries"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
    finally:
        server.stop()
    return results


def seed(port: int, fixture: dict[str, Any]) -> None:
    """Every user posts once in every room: a member, with unread counts and a history."""

    def post(token: str) -> None:
        api = Api(port, token)
        for room in fixture["rooms"]:
            status, answer = api.call(
                "POST", f"/api/rooms/{room}/messages", {"body": "hi", "client_msg_id": "seed"}
            )
            if status not in (200, 201):
                raise RuntimeError(f"seeding {room} answered {status}: {answer[:300]!r}")

    threads = [threading.Thread(target=post, args=(token,)) for token in fixture["tokens"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def markdown(args: argparse.Namespace, results: dict[str, dict[str, dict[str, Any]]]) -> str:
    command = (
        f"python -m bench.http_api --concurrency {args.concurrency} --duration {args.duration} "
        f"--users {args.users} --rooms {args.rooms}"
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "unknown (not a git checkout)"
    )
    rows = []
    for name, endpoints in results.items():
        cache, pool = CONFIGS[name]
        for mode, r in endpoints.items():
            base = results.get("off/off", {}).get(mode)
            ratio = f"{r['rps'] / base['rps']:.2f}x" if base else "-"
            rows.append(
                f"| {'on' if cache else 'off'} | {'on' if pool else 'off'} | {mode} "
                f"| {r['rps']:,.0f} | {ratio} | {r['p50_us'] / 1000:.1f} "
                f"| {r['p99_us'] / 1000:.1f} | {r['queries']:.2f} | {r['requests']:,} |\n"
            )
    return (
        "\n## HTTP API: the cache and the pool, off and on\n\n"
        f"`{command}` ({when}, commit {commit}): one uvicorn process (production flags), "
        f"a throwaway PostgreSQL and Redis, {args.users} token users each in {args.rooms} "
        f"public rooms; wrk from {args.concurrency} keep-alive connections, "
        f"{args.duration} s per endpoint, one endpoint at a time. "
        "Publish: POST /api/rooms/<slug>/messages with a fresh client_msg_id; "
        "room list: GET /api/rooms; "
        "history: GET /api/rooms/<slug>/messages?before=N&limit=50 at random N. "
        "The cache is CACHE_URL in Redis (off: none); the pool is psycopg's "
        "(DATABASE_POOL_MAX_SIZE 10; off: DATABASE_POOL=0, a connection per request). "
        "Compare ratios within one run: the machine's cores are shared with the load "
        "generator and the databases. Queries per request: the server's "
        "chat_db_queries_per_request over the run (authentication included).\n\n"
        "| cache | pool | endpoint | requests/s | vs off/off | p50 ms | p99 ms "
        "| queries/request | requests |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "".join(rows)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 s per endpoint (make bench QUICK=1)"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=int, default=8, help="seconds per endpoint")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of room list first")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="a subset of: " + ", ".join(CONFIGS)
    )
    parser.add_argument("--append", help="a Markdown file to add the table to (make bench)")
    parser.add_argument("--json", help="write the results here as JSON too")
    args = parser.parse_args()
    if args.quick:
        args.duration = 2
    configs = [name.strip() for name in args.configs.split(",")]
    unknown = [name for name in configs if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {list(CONFIGS)}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make services)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chat-http-") as tmp:
        work = Path(tmp)
        services = Services(tmp=work / "services", logs=work)
        (work / "services").mkdir()
        services.start()
        try:
            services.manage("migrate", "--noinput")
            out = work / "fixture.json"
            services.manage(
                "provision_load", "--users", str(args.users), "--rooms", str(args.rooms),
                "--prefix", "bench", "--out", str(out),
            )  # fmt: skip
            fixture = json.loads(out.read_text())
            first = spawn_with(services, POOL_ON)
            seed(first.port, fixture)
            first.stop()
            results = {name: configuration(services, name, fixture, args, work) for name in configs}
        except Exception:
            for log in sorted(work.glob("room-list-*.log")):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}")
            raise
        finally:
            services.stop()
    text = markdown(args, results)
    print(text)
    print(f"({time.monotonic() - started:.0f} s in all)")
    if args.append:
        with open(args.append, "a") as out_file:
            out_file.write(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
