"""Detached processes, known by pid and start time, and the waits around them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# The machine's own PostgreSQL and Redis: the cluster, the bench and the tests never take
# their ports.
FORBIDDEN_PORTS = frozenset({5432, 6379})
POLL = 0.1


class StartFailed(RuntimeError):
    """A process exited or did not answer in time; the message names its log."""


@dataclass(frozen=True)
class Proc:
    """A process the cluster started: its pid and its start time, so a reused pid is not it."""

    pid: int
    start: int

    def as_dict(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> Proc:
        return cls(int(data["pid"]), int(data["start"]))

    @property
    def alive(self) -> bool:
        stat = _stat(self.pid)
        # A zombie has exited; it only waits for a parent that is no longer there to reap it.
        return stat is not None and stat[0] != "Z" and int(stat[19]) == self.start

    def signal(self, signum: signal.Signals) -> bool:
        """Send `signum` if this very process still runs; False if it is gone."""
        if not self.alive:
            return False
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive:
            if time.monotonic() > deadline:
                return False
            # A process that is not our child offers nothing to wait on but polling.
            time.sleep(POLL)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.signal(signal.SIGTERM) and not self.wait_gone(timeout):
            self.signal(signal.SIGKILL)
            self.wait_gone(5.0)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name: state first, start time at [19]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def proc_of(pid: int) -> Proc:
    stat = _stat(pid)
    if stat is None:
        raise StartFailed(f"process {pid} is gone")
    return Proc(pid, int(stat[19]))


# Ports this process has handed out. The kernel may give a port again as soon as the probing
# socket is closed; two servers started together (a Redis master and its replica) would then
# fight over one, and one of them would fail to start.
_given: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now, never the machine's PostgreSQL or Redis, and
    never one handed out before by this process (the bench, the tests and `make cluster`
    use it). A server still has to be ready to lose a race with another process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in FORBIDDEN_PORTS and port not in _given:
            _given.add(port)
            return port


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def spawn(
    command: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path | None = None
) -> Proc:
    """Start `command` in a session of its own, output appended to `log`; do not wait for it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        child = subprocess.Popen(  # noqa: S603 -- our own command lines, no shell
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own session: the terminal's Ctrl-C and the caller's exit do not reach it.
            start_new_session=True,
        )
    return proc_of(child.pid)


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status GET `url` answers with, or None if nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code
    except (OSError, urllib.error.URLError):
        return None


def wait_http(url: str, proc: Proc, log: Path, timeout: float, want: int = 200) -> None:
    """Until GET `url` answers `want`; StartFailed if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while http_status(url) != want:
        if not proc.alive:
            raise StartFailed(f"{url}: the process exited; see {log}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise StartFailed(f"{url}: no {want} within {timeout:.0f}s; see {log}:\n{tail(log)}")
        time.sleep(POLL)


def tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
