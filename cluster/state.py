"""What runs where: var/cluster/state.json, read and written under a lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.procs import Proc

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "var" / "cluster"

# A pod's state as the cluster left it: serving, drained on purpose, or killed (a crash).
READY, DRAINED, KILLED = "ready", "drained", "killed"


@dataclass
class Pod:
    n: int
    port: int
    proc: Proc | None = None
    state: str = READY

    @property
    def name(self) -> str:
        return f"pod{self.n}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class State:
    root: Path
    # Settings every app process gets on top of the caller's environment (no secrets: the
    # key is a file, PostgreSQL trusts loopback).
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    rules: str = ""  # where Prometheus' alert rules came from, or why there are none

    @property
    def path(self) -> Path:
        return self.root / "state.json"

    def pod(self, n: int) -> Pod:
        for pod in self.pods:
            if pod.n == n:
                return pod
        known = ", ".join(str(p.n) for p in self.pods)
        raise LookupError(f"no pod {n}; the cluster's pods are {known}")

    def save(self) -> None:
        data: dict[str, Any] = {
            "env": self.env,
            "ports": self.ports,
            "procs": {name: proc.as_dict() for name, proc in self.procs.items()},
            "pods": [
                {
                    "n": p.n,
                    "port": p.port,
                    "proc": p.proc.as_dict() if p.proc else None,
                    "state": p.state,
                }
                for p in self.pods
            ],
            "rules": self.rules,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, root: Path) -> State | None:
        path = root / "state.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(
            root=root,
            env=data["env"],
            ports=data["ports"],
            procs={name: Proc.from_dict(p) for name, p in data["procs"].items()},
            pods=[
                Pod(p["n"], p["port"], Proc.from_dict(p["proc"]) if p["proc"] else None, p["state"])
                for p in data["pods"]
            ],
            rules=data.get("rules", ""),
        )


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One cluster command at a time per state directory."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
