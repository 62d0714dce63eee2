"""Throwaway servers on loopback for the benchmark: Redis, PostgreSQL, and the targets.

Never the machine's own: every server gets a free port and a temp folder, and
is stopped when the benchmark ends.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg
from pytest_postgresql.executors.proc import PostgreSQLExecutor

from bench.cpu import CpuMeter
from cluster.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_CTL = ROOT / "tests" / "bin" / "pg_ctl"  # runs PostgreSQL as the postgres user under root
READY_TIMEOUT = 30.0
FLOOD_CONTROL = ("PUBLISH_RATE", "PUBLISH_BURST", "USER_PUBLISH_RATE", "USER_PUBLISH_BURST")
UNLIMITED = 1_000_000
UVICORN_ARGS = (
    # As the README serves production: no permessage-deflate, 64 KiB frames at most.
    "--ws-max-size",
    "65536",
    "--ws-per-message-deflate",
    "false",
    "--no-access-log",
    "--log-level",
    "warning",
)

# The product's own websocket protocol class, lighter per socket (realtime/wsserver.py).
PRODUCT_WS = ("--ws", "realtime.wsserver:WebSocketProtocol")

# PostgreSQL as production runs it: pytest-postgresql's command line passes -F (fsync off),
# and a later -c wins over it. `Services.pg_settings` reads back what the server runs with.
DURABLE = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
PG_CHECKED = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level")

# The Socket.IO baseline (bench/baselines/socketio/): `make bench` installs its node_modules
# from the committed package-lock.json.
SOCKETIO = ROOT / "bench" / "baselines" / "socketio"


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port} after {READY_TIMEOUT}s")


def start_postgres(tmp: Path, options: str = "") -> tuple[PostgreSQLExecutor, int]:
    """A throwaway PostgreSQL in `tmp` on a free loopback port, answering when this returns."""
    port = free_port()
    postgres = PostgreSQLExecutor(
        executable=str(PG_CTL),
        host="127.0.0.1",
        port=port,
        datadir=str(tmp / "data"),
        unixsocketdir=str(tmp),
        logfile=str(tmp / "postgres.log"),
        startparams="-w",
        dbname="chat",
        postgres_options=options,
    )
    # pg_ctl -w sometimes gives up early on a busy machine: wait for the server here instead.
    with contextlib.suppress(Exception):
        postgres.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres").close()
            return postgres, port
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def raise_open_files_limit() -> int:
    """Servers and generator inherit this: 19,000 connections need 19,000+ descriptors."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """None of the caller's settings (DJANGO_*, DATABASE_URL, *_FILE secrets) leak in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Server:
    """One target process listening on 127.0.0.1:port."""

    target: str  # floor, product, ceiling or socketio
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        if self.target == "socketio":  # chat-loadtest speaks Socket.IO to such a URL
            return f"ws://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket"
        return f"ws://127.0.0.1:{self.port}/ws/"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        # No graceful shutdown: it would wait for the clients the last step left behind.
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Services:
    """Redis and PostgreSQL for one benchmark run, in a temp folder."""

    tmp: Path
    logs: Path  # server logs are kept with the reports; tmp is removed at the end
    redis_port: int = 0
    pg_port: int = 0
    redis: subprocess.Popen[bytes] | None = None
    postgres: PostgreSQLExecutor | None = None
    servers: list[Server] = field(default_factory=list)
    bare_ws: str = "websockets-sansio"  # uvicorn's --ws for the "bare" target (bench/memory.py)
    snapshots: Path | None = None  # run uvicorn under tracemalloc (bench/allocations.py)
    pg_options: str = ""  # more of PostgreSQL's -c options (bench/costs.py)
    settings: dict[str, str] = field(default_factory=dict)  # the product's, over the defaults

    def start(self) -> None:
        self.redis_port = free_port()
        redis_dir = self.tmp / "redis"
        redis_dir.mkdir()
        redis_log = redis_dir / "redis.log"
        self.redis = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(redis_dir)),
                *("--logfile", str(redis_log)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.redis_port, self.redis, redis_log)
        self.pg_port = free_port()
        pg_dir = self.tmp / "pg"
        pg_dir.mkdir()
        self.postgres = PostgreSQLExecutor(
            executable=str(PG_CTL),
            host="127.0.0.1",
            port=self.pg_port,
            datadir=str(pg_dir / "data"),
            unixsocketdir=str(pg_dir),
            logfile=str(pg_dir / "postgres.log"),
            startparams="-w",
            dbname="chat",
            # Room for 10,000 connections' worth of pool churn, and durable commits.
            postgres_options=f"-c max_connections=200 {DURABLE} {self.pg_options}",
        )
        self.postgres.start()
        # The port opens before PostgreSQL accepts sessions ("the database system is starting up").
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1",
                    port=self.pg_port,
                    user="postgres",
                    dbname="postgres",
                    autocommit=True,
                ) as conn:
                    conn.execute("CREATE DATABASE chat")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.stop()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def pg_pid(self) -> int:
        """The postmaster's pid (its backends are its children), from its pid file."""
        assert self.postgres is not None  # noqa: S101 -- started first
        return int((Path(self.postgres.datadir) / "postmaster.pid").read_text().split()[0])

    @property
    def redis_pid(self) -> int:
        assert self.redis is not None  # noqa: S101 -- started first
        return self.redis.pid

    def cpu_meter(self, servers: list[Server], generator: int | None = None) -> CpuMeter:
        """The servers' processes, PostgreSQL's, Redis' and the generator's, for bench/cpu.py."""
        return CpuMeter(
            {
                "server": [server.pid for server in servers],
                "postgres": [self.pg_pid],
                "redis": [self.redis_pid],
                "generator": [generator] if generator else [],
            }
        )

    def pg_settings(self) -> dict[str, str]:
        """What PostgreSQL runs with (fsync, synchronous_commit...), as SHOW would answer."""
        with psycopg.connect(
            host="127.0.0.1", port=self.pg_port, user="postgres", dbname="postgres"
        ) as conn:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(PG_CHECKED)]
            ).fetchall()
        return {str(name): str(setting) for name, setting in rows}

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def product_env(self) -> dict[str, str]:
        return clean_env(
            {
                "DJANGO_SETTINGS_MODULE": "project.settings",
                "DATABASE_URL": f"postgres://postgres@127.0.0.1:{self.pg_port}/chat",
                "REDIS_URL": self.redis_url,
                "SECRET_KEY": "bench-not-a-secret-" + "x" * 40,
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "LOG_LEVEL": "WARNING",
                # Flood control off, as project/settings.py asks of load tests: the benchmark
                # measures delivery, and a few publishers stand for many users.
                **{name: str(UNLIMITED) for name in FLOOD_CONTROL},
                # Scenario 5 holds 19,000 sockets; the default cap (15,000) would refuse some.
                "MAX_CONNECTIONS_PER_PROCESS": "19500",
                # "{redis}" in a value is this run's Redis (--set CACHE_URL=redis://{redis}/1).
                **{
                    name: value.replace("{redis}", f"127.0.0.1:{self.redis_port}")
                    for name, value in self.settings.items()
                },
            }
        )

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "python"), "manage.py", *args],
            cwd=ROOT,
            env=self.product_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout + done.stderr

    def flush_redis(self) -> None:
        """Forget the previous target's groups: stale members would still be sent to."""
        subprocess.run(
            ["redis-cli", "-p", str(self.redis_port), "FLUSHALL"],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start_servers(self, target: str, count: int) -> list[Server]:
        """Start `count` processes of a target at once, and wait for all of them."""
        servers = [self._spawn(target, f"{target}-{i}") for i in range(count)]
        for server in servers:
            wait_for_port(server.port, server.proc, server.log)
        return servers

    def _spawn(self, target: str, name: str) -> Server:
        port = free_port()
        log = self.logs / f"server-{name}-{port}.log"
        if target == "product":
            cmd = [str(BIN / "uvicorn"), "project.asgi:application", *UVICORN_ARGS, *PRODUCT_WS]
            env = self.product_env()
        elif target == "floor":
            cmd = [str(BIN / "uvicorn"), "bench.baselines.floor.asgi:application", *UVICORN_ARGS]
            env = clean_env(
                {
                    "DJANGO_SETTINGS_MODULE": "bench.baselines.floor.settings",
                    "REDIS_URL": self.redis_url,
                }
            )
        elif target == "ceiling":
            cmd = [str(BIN / "python"), "bench/baselines/ceiling.py"]
            env = clean_env({})
        elif target == "socketio":
            if not (SOCKETIO / "node_modules").is_dir():
                raise RuntimeError(f"no {SOCKETIO}/node_modules: `make bench` installs it")
            cmd = ["node", str(SOCKETIO / "server.js")]
            env = clean_env({"REDIS_URL": self.redis_url})
        elif target == "bare":
            cmd = [str(BIN / "uvicorn"), "bench.baselines.bare_asgi:app", *UVICORN_ARGS]
            cmd += ["--ws", self.bare_ws]
            env = clean_env({})
        else:
            raise ValueError(target)
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        if self.snapshots is not None and cmd[0].endswith("uvicorn"):
            cmd[:1] = [str(BIN / "python"), "-m", "bench.traced"]
            env["SNAPSHOT_DIR"] = str(self.snapshots)
        out: IO[bytes] = log.open("wb")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        server = Server(target, name, port, proc, log)
        self.servers.append(server)
        return server
