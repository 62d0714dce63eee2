"""A throwaway Redis Cluster on loopback: N masters with R replicas each, for tests and benchmarks.

    with RedisCluster(masters=3, replicas=1) as cluster:
        env["REDIS_CLUSTER_NODES"] = cluster.seeds
        port = cluster.master_of("chat:g:room.1")
        cluster.kill(port)
        seconds = cluster.wait_promoted(port)

Every node is a real redis-server (`--cluster-enabled yes`) on a free loopback port, with its
cluster bus on a second free port (`--cluster-port`, Redis 7: the default port + 10000 may be
taken or out of range), its nodes.conf in a temp folder, nothing persisted. The cluster is made
with `redis-cli --cluster create`, and `start()` returns once every node says cluster_state:ok
and every replica is in sync with its master. Why plain subprocess and redis-py rather than a
fixture library: pytest-redis starts single servers only, and the benchmark runs outside pytest.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.crc import key_slot

from bench.cpu import CpuMeter, cpu_seconds
from cluster.procs import free_port

READY_WITHIN = 30.0
POLL = 0.1  # seconds between looks at servers that announce nothing


@dataclass(frozen=True)
class Node:
    """One node as the cluster sees it now."""

    port: int
    pid: int
    role: str  # "master" or "replica"
    slots: tuple[tuple[int, int], ...]  # inclusive ranges a master serves; () for a replica
    master_port: int | None  # a replica's master; None for a master


@dataclass
class RedisCluster:
    """N masters with R replicas each: real redis-server processes, stopped by `stop()`."""

    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 1000
    # "no": a shard without a master stops only its own slots, not the whole cluster
    # (what docs/operations.md recommends); True keeps Redis' default.
    require_full_coverage: bool = False
    executable: str = field(default_factory=lambda: shutil.which("redis-server") or "redis-server")
    directory: Path | None = None  # made (and removed at stop) when not given
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed_at: dict[int, float] = field(default_factory=dict)
    _own_directory: bool = False
    _replicas_of: dict[int, list[int]] = field(default_factory=dict)  # master port -> replicas

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    # Starting

    def start(self) -> RedisCluster:
        """Start every node, create the cluster, and wait until it is whole and in sync."""
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="chat-redis-cluster-"))
            self._own_directory = True
        try:
            count = self.masters * (1 + self.replicas)
            self.ports = [self._spawn() for _ in range(count)]
            for port in self.ports:
                _wait(partial(_ping, port), f"redis-server on {port}", self._log(port))
            self._create()
            _wait(self._ready, "the cluster whole and every replica in sync")
            self._replicas_of = {
                node.port: [n.port for n in self.nodes() if n.master_port == node.port]
                for node in self.nodes()
                if node.role == "master"
            }
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> int:
        port, bus = free_port(), free_port()  # free_port never answers FORBIDDEN_PORTS
        folder = self._folder(port)
        folder.mkdir()
        self.procs[port] = subprocess.Popen(
            [
                self.executable,
                *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
                *("--cluster-enabled", "yes", "--cluster-port", str(bus)),
                *("--cluster-config-file", str(folder / "nodes.conf")),
                *("--cluster-node-timeout", str(self.node_timeout_ms)),
                "--cluster-require-full-coverage",
                "yes" if self.require_full_coverage else "no",
                *("--save", "", "--appendonly", "no", "--logfile", str(self._log(port))),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return port

    def _folder(self, port: int) -> Path:
        if self.directory is None:
            raise RuntimeError("the cluster was not started")
        return self.directory / str(port)

    def _log(self, port: int) -> Path:
        return self._folder(port) / "redis.log"

    def _create(self) -> None:
        cli = str(Path(self.executable).with_name("redis-cli"))
        if not Path(cli).exists():
            cli = shutil.which("redis-cli") or "redis-cli"
        done = subprocess.run(
            [
                cli,
                *("--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports)),
                *("--cluster-replicas", str(self.replicas), "--cluster-yes"),
            ],
            capture_output=True,
            text=True,
            timeout=READY_WITHIN,
            check=False,
        )
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")

    def _ready(self) -> bool:
        nodes = self.nodes()
        masters = {n.port for n in nodes if n.role == "master" and n.slots}
        # A node redis-cli has not yet made a replica is an empty master for a moment.
        replicas = Counter(n.master_port for n in nodes if n.role == "replica")
        if len(masters) != self.masters or any(replicas[m] != self.replicas for m in masters):
            return False
        return all(self._node_ready(node, len(self.ports)) for node in nodes)

    def _node_ready(self, node: Node, known: int) -> bool:
        info = cluster_info(node.port)
        if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != known:
            return False
        if node.role == "master":
            return True
        replication = _info(node.port, "replication")
        return replication.get("master_link_status") == "up" and not replication.get(
            "master_sync_in_progress"
        )

    # Looking

    def live_ports(self) -> list[int]:
        return [port for port in self.ports if self.procs[port].poll() is None]

    def nodes(self) -> list[Node]:
        """Every live node, with its role and slots as the cluster reports them now."""
        listing = ""
        for port in self.live_ports():
            with contextlib.suppress(redis.RedisError):
                listing = _command(port, "CLUSTER", "NODES")
                break
        by_id: dict[str, tuple[int, str, str, tuple[tuple[int, int], ...]]] = {}
        for line in listing.splitlines():
            node_id, address, flags, master_id, *_rest = line.split()
            slots = tuple(_slot_range(part) for part in line.split()[8:] if "[" not in part)
            port = int(address.split("@")[0].rsplit(":", 1)[1])
            role = "master" if "master" in flags.split(",") else "replica"
            by_id[node_id] = (port, role, master_id, slots)
        live = set(self.live_ports())
        return [
            Node(
                port=port,
                pid=self.procs[port].pid,
                role=role,
                slots=slots if role == "master" else (),
                master_port=by_id[master_id][0] if master_id in by_id else None,
            )
            for port, role, master_id, slots in by_id.values()
            if port in live
        ]

    @property
    def seeds(self) -> str:
        """REDIS_CLUSTER_NODES: every node as host:port, comma-separated."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def master_ports(self) -> list[int]:
        return sorted(node.port for node in self.nodes() if node.role == "master" and node.slots)

    def master_of(self, key: str | bytes) -> int:
        """The port of the master serving the slot of `key` (a key or a shard channel)."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for node in self.nodes():
            if any(low <= slot <= high for low, high in node.slots):
                return node.port
        raise LookupError(f"no live master serves slot {slot} of {key!r}")

    def cpu_seconds(self) -> dict[int, float]:
        """CPU seconds each live node has used so far, by port."""
        return {port: cpu_seconds(self.procs[port].pid) for port in self.live_ports()}

    def meter(self) -> CpuMeter:
        """A CpuMeter over the masters serving slots now, one group per port."""
        return CpuMeter({str(n.port): [n.pid] for n in self.nodes() if n.slots})

    # Breaking

    def kill(self, port: int) -> None:
        """SIGKILL one node: no goodbye to its clients or to the cluster."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        self.killed_at[port] = time.monotonic()

    def wait_promoted(self, dead_port: int, timeout: float = 30.0) -> float:
        """Until a replica of the dead master is a master and every live node says
        cluster_state:ok; the seconds since the kill."""
        candidates = set(self._replicas_of.get(dead_port, []))
        if not candidates:
            raise ValueError(f"{dead_port} had no replica to promote")

        def promoted() -> bool:
            masters = {n.port for n in self.nodes() if n.role == "master" and n.slots}
            return bool(candidates & masters) and all(
                cluster_info(port).get("cluster_state") == "ok" for port in self.live_ports()
            )

        _wait(promoted, f"a replica of {dead_port} promoted", within=timeout)
        return time.monotonic() - self.killed_at.get(dead_port, time.monotonic())

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        if self._own_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)


def _command(port: int, *args: str) -> str:
    """One command's text answer (CLUSTER NODES, CLUSTER INFO: plain text, not parsed)."""
    with _client(port) as client:
        return str(client.execute_command(*args))


def _ping(port: int) -> bool:
    with _client(port) as client:
        return bool(client.ping())


def _info(port: int, section: str) -> dict[str, Any]:
    try:
        with _client(port) as client:
            info: dict[str, Any] = client.info(section)
            return info
    except redis.RedisError:
        return {}


def cluster_info(port: int) -> dict[str, str]:
    """`CLUSTER INFO` of one node as a dict; {} if it does not answer."""
    try:
        text = _command(port, "CLUSTER", "INFO")
    except redis.RedisError:
        return {}
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _slot_range(part: str) -> tuple[int, int]:
    low, _, high = part.partition("-")
    return int(low), int(high or low)


def _wait(
    check: Callable[[], bool], what: str, log: Path | None = None, within: float = READY_WITHIN
) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise TimeoutError(f"no {what} within {within}s\n{tail}")
        time.sleep(POLL)
