"""The cluster's own PostgreSQL and Redis: throwaway, on loopback ports of their own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg import sql

from cluster.procs import POLL, Proc, StartFailed, proc_of, spawn, tail

DATABASE = "chat"
USER = "chat"
START_TIMEOUT = 30.0


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary from Debian's packages (the newest installed)."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[4]))
    if not found:
        raise StartFailed(f"{name} not found: `make services` installs PostgreSQL")
    return str(found[-1])


def _as_postgres(command: Sequence[str], owned: Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, give `owned` to the postgres user, run as it."""
    if os.geteuid() != 0:
        return list(command)
    shutil.chown(owned, "postgres")
    for path in owned.rglob("*"):
        shutil.chown(path, "postgres")
    # The postgres user must be able to reach the folder through the checkout's.
    for parent in owned.parents:
        parent.chmod(parent.stat().st_mode | 0o001)
    return ["runuser", "-u", "postgres", "--", *command]


def start_postgres(root: Path, port: int) -> Proc:
    """initdb a fresh cluster in root/postgres, start it on 127.0.0.1:port, create the database."""
    home = root / "postgres"
    home.mkdir(parents=True)
    data, log = home / "data", root / "logs" / "postgres.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    # Trust on loopback: a throwaway server nobody else reaches, and no password to keep.
    initdb = [pg_bin("initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8"]
    _run(_as_postgres([*initdb, "--no-sync"], home), log)
    if os.geteuid() == 0:
        shutil.chown(log, "postgres")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {home} -c fsync=off"
    pg_ctl = [pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30", "-o", options]
    _run(_as_postgres([*pg_ctl, "start"], home), log)
    proc = proc_of(int((data / "postmaster.pid").read_text().split()[0]))
    with psycopg.connect(
        host="127.0.0.1", port=port, user=USER, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    return proc


def stop_postgres(proc: Proc) -> None:
    # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, nothing is waited for.
    if proc.signal(signal.SIGINT) and not proc.wait_gone(15.0):
        proc.stop()


def start_redis(root: Path, port: int, env: dict[str, str]) -> Proc:
    """redis-server on 127.0.0.1:port, no persistence, dir root/redis."""
    home = root / "redis"
    home.mkdir(parents=True, exist_ok=True)
    log = root / "logs" / "redis.log"
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise StartFailed("redis-server not found: `make services` installs it")
    proc = spawn(
        [
            redis_server,
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(home)),
            *("--save", "", "--appendonly", "no", "--daemonize", "no"),
        ],
        log,
        env,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not _redis_pongs(port):
        if not proc.alive or time.monotonic() > deadline:
            raise StartFailed(f"redis-server did not start; see {log}:\n{tail(log)}")
        time.sleep(POLL)
    return proc


def _redis_pongs(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _run(command: Sequence[str], log: Path) -> None:
    done = subprocess.run(  # noqa: S603 -- our own command lines, no shell
        list(command), capture_output=True, text=True, timeout=START_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise StartFailed(
            f"{command[0]} exited {done.returncode}:\n{done.stdout}{done.stderr}\n{tail(log)}"
        )
