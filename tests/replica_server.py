"""A throwaway streaming replica of a running PostgreSQL: pg_basebackup -R, then a hot standby.

The primary needs wal_level=replica (PostgreSQL's default) and a `replication` line in
pg_hba.conf that trusts loopback (initdb's default with --auth=trust, as pytest-postgresql
runs it). As root, the standby runs as the postgres user through tests/bin/pg_ctl.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psycopg

from cluster.procs import free_port

PG_CTL = str(Path(__file__).parent / "bin" / "pg_ctl")


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else name


class Replica:
    """A hot standby streaming from host:port, its data in `workdir`."""

    def __init__(self, host: str, port: int, user: str, workdir: Path) -> None:
        self.primary_host, self.primary_port, self.primary_user = host, port, user
        self.host, self.user = "127.0.0.1", user
        self.port = free_port()
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.log = workdir / "replica.log"

    def create(self) -> None:
        """Copy the primary (pg_basebackup -R writes the standby's primary_conninfo)."""
        subprocess.run(
            [
                *(_pg_bin("pg_basebackup"), "-h", self.primary_host, "-p", str(self.primary_port)),
                *("-U", self.primary_user, "-D", str(self.datadir), "-R", "-X", "stream"),
                *("--checkpoint=fast", "--no-sync"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c hot_standby=on"
            f" -c unix_socket_directories={self.workdir} -c fsync=off"
        )
        subprocess.run(
            [PG_CTL, "-D", str(self.datadir), "-l", str(self.log), "-o", options, "-w", "start"],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def stop(self) -> None:
        subprocess.run(
            [PG_CTL, "-D", str(self.datadir), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
            timeout=30,
        )

    def sql(self, query: str, dbname: str = "postgres") -> object:
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=dbname, autocommit=True
        ) as conn:
            row = conn.execute(query).fetchone()
            return row[0] if row else None

    def catch_up(self, timeout: float = 10.0) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        with psycopg.connect(
            host=self.primary_host,
            port=self.primary_port,
            user=self.primary_user,
            dbname="postgres",
        ) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"):
                return
            time.sleep(0.02)
        raise TimeoutError(f"the replica did not replay up to {target} in {timeout} s")

    def pause(self, timeout: float = 10.0) -> None:
        """Stop replaying (the standby answers as of now) and wait until it has."""
        self.sql("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + timeout
        while self.sql("SELECT pg_get_wal_replay_pause_state()") != "paused":
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not pause")
            time.sleep(0.02)

    def resume(self) -> None:
        self.sql("SELECT pg_wal_replay_resume()")
