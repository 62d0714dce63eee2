"""GET /api/rooms with the cache off and on: latency, requests/s and queries per request.

    python -m bench.room_list [--rooms 50] [--requests 200] [--concurrency 8]

Starts a throwaway PostgreSQL and Redis (bench/services.py), one uvicorn process per run
(the product's settings; the database pool on), and a user who posted once in each of
`--rooms` public rooms (so each has a last_seq and an unread count). Each run reads the
list `--requests` times one after another (latency), then as many again from
`--concurrency` keep-alive connections at once (throughput). Runs: the cache off
(REDIS_URL and no CACHE_URL: nothing), the cache in Redis, and the cache in Redis with a
message posted by another user before every read (each read then refreshes one last_seq).
Queries per request come from the server's /metrics (chat_db_queries_per_request).

Then sessions: 100 GET /api/me with a session cookie, counting the connections Redis
accepted meanwhile, with the product's sessions (web/sessions.py) and with Django's own
cached_db (bench/baselines/django_sessions.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.services import (
    BIN,
    PRODUCT_WS,
    ROOT,
    UVICORN_ARGS,
    Server,
    Services,
    wait_for_port,
)
from cluster.procs import free_port

ROUTE = 'route="api/rooms"'
BENCH_LOGIN = (  # a throwaway user on the throwaway database
    "from django.contrib.auth.models import User; u = User.objects.get(username='bench-0'); "
    "u.set_password('bench-password'); u.save()"
)


class Api:
    """One keep-alive HTTP connection to a server, as one user."""

    def __init__(self, port: int, token: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body)
        self.conn.request(method, path, body=data, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.read()


def queries(port: int) -> tuple[float, float]:
    """(sum, count) of chat_db_queries_per_request for the room list, from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    found = {}
    for kind in ("sum", "count"):
        match = re.search(rf"chat_db_queries_per_request_{kind}{{{ROUTE}}} (\S+)", text)
        found[kind] = float(match.group(1)) if match else 0.0
    return found["sum"], found["count"]


def run(
    services: Services, env: dict[str, str], tokens: list[str], args: Any, posting: bool = False
) -> dict[str, Any]:
    server = spawn_with(services, env)
    reader, writer = Api(server.port, tokens[0]), Api(server.port, tokens[1])
    rooms = [f"bench-{i}" for i in range(args.rooms)]

    def read(api: Api, n: int) -> float:
        if posting:
            status, _ = writer.call(
                "POST",
                f"/api/rooms/{rooms[n % len(rooms)]}/messages",
                {"body": "hi", "client_msg_id": f"{time.monotonic_ns()}-{n}"},
            )
            if status != 201:
                raise RuntimeError(f"POST answered {status}")
        started = time.perf_counter()
        status, body = api.call("GET", "/api/rooms")
        elapsed = time.perf_counter() - started
        if status != 200 or len(json.loads(body)["rooms"]) < args.rooms:
            raise RuntimeError(f"GET /api/rooms answered {status}: {body[:200]!r}")
        return elapsed

    for n in range(10):  # warm: connections, the pool, the cache
        read(reader, n)
    before = queries(server.port)
    latencies = [read(reader, n) for n in range(args.requests)]
    after = queries(server.port)
    per_request = (after[0] - before[0]) / max(after[1] - before[1], 1)
    if posting:
        throughput = None  # the writer is one connection: it would measure the posts
    else:
        apis = [Api(server.port, tokens[0]) for _ in range(args.concurrency)]
        share = args.requests // args.concurrency
        threads = [
            threading.Thread(target=lambda api=api: [read(api, n) for n in range(share)])
            for api in apis
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        throughput = share * len(apis) / (time.perf_counter() - started)
    server.stop()
    latencies.sort()
    return {
        "mean_ms": statistics.fmean(latencies) * 1000,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "queries": per_request,
        "rps": throughput,
    }


def spawn_with(services: Services, env: dict[str, str]) -> Server:
    """The product in one uvicorn process, with these settings on top of the benchmark's."""
    port = free_port()
    log = services.logs / f"room-list-{port}.log"
    cmd = [str(BIN / "uvicorn"), "project.asgi:application", *UVICORN_ARGS, *PRODUCT_WS]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    full = {**services.product_env(), **env}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=full, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    server = Server("product", f"room-list-{port}", port, proc, log)
    services.servers.append(server)
    wait_for_port(port, proc, log)
    return server


def session_connections(services: Services, settings_module: str) -> int:
    """Connections Redis accepted while one browser made 100 session requests."""
    cache = {"CACHE_URL": f"redis://127.0.0.1:{services.redis_port}/1"}
    server = spawn_with(services, {**cache, "DJANGO_SETTINGS_MODULE": settings_module})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/accounts/login/")
    page = conn.getresponse()
    form = page.read().decode()
    csrf = re.search(r"csrftoken=([^;]+)", page.getheader("Set-Cookie") or "")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    if csrf is None or token is None:
        raise RuntimeError("no CSRF token on the login page")
    conn.request(
        "POST",
        "/accounts/login/",
        body=f"username=bench-0&password=bench-password&csrfmiddlewaretoken={token.group(1)}",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={csrf.group(1)}",
            "Referer": f"http://127.0.0.1:{server.port}/accounts/login/",
        },
    )
    login = conn.getresponse()
    login.read()
    session = re.search(r"sessionid=([^;]+)", login.getheader("Set-Cookie") or "")
    if session is None:
        raise RuntimeError(f"login answered {login.status} without a session")
    before = redis_connections(services)
    for _ in range(100):
        conn.request("GET", "/api/me", headers={"Cookie": f"sessionid={session.group(1)}"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /api/me answered {response.status}")
    opened = redis_connections(services) - before
    server.stop()
    return opened


def redis_connections(services: Services) -> int:
    info = subprocess.run(
        ["redis-cli", "-p", str(services.redis_port), "INFO", "stats"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    found = re.search(r"total_connections_received:(\d+)", info)
    if found is None:
        raise RuntimeError("no total_connections_received in INFO stats")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        services = Services(tmp=Path(tmp), logs=Path(tmp))
        services.start()
        try:
            services.manage("migrate", "--noinput")
            out = Path(tmp) / "tokens.json"
            services.manage(
                "provision_load", "--users", "2", "--rooms", str(args.rooms),
                "--prefix", "bench", "--out", str(out),
            )  # fmt: skip
            tokens = json.loads(out.read_text())["tokens"]
            cache = {"CACHE_URL": f"redis://127.0.0.1:{services.redis_port}/1"}
            # The reader posts once in each room: a member with a last_seq and unread counts.
            first = spawn_with(services, {})
            poster = Api(first.port, tokens[0])
            for i in range(args.rooms):
                status, _ = poster.call(
                    "POST", f"/api/rooms/bench-{i}/messages", {"body": "hi", "client_msg_id": "1"}
                )
                if status != 201:
                    raise RuntimeError(f"POST answered {status}")
            first.stop()
            services.manage("shell", "-c", BENCH_LOGIN)
            sessions = {
                "web.sessions (the product)": session_connections(services, "project.settings"),
                "Django's cached_db": session_connections(
                    services, "bench.baselines.django_sessions"
                ),
            }
            results = {
                "cache off": run(services, {}, tokens, args),
                "cache in Redis": run(services, cache, tokens, args),
                "cache in Redis, a message before each read": run(
                    services, cache, tokens, args, posting=True
                ),
            }
        finally:
            services.stop()
    print(f"GET /api/rooms, {args.rooms} rooms, {args.requests} requests")
    print("| run | mean ms | p50 ms | p99 ms | queries/request | requests/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        rps = "-" if r["rps"] is None else f"{r['rps']:.0f}"
        print(
            f"| {name} | {r['mean_ms']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['queries']:.2f} | {rps} |"
        )
    print("\nRedis connections opened by 100 GET /api/me of one signed-in browser")
    for name, opened in sessions.items():
        print(f"| {name} | {opened} |")


if __name__ == "__main__":
    main()
