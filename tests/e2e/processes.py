"""Processes seen from outside: /proc gauges, polling them, PostgreSQL's pids, freezing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.e2e.servers import Pod


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def holds_connection(pid: int, server_port: int, client_port: int) -> bool:
    """Whether the process still has the server end of this loopback TCP connection open."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            inodes.add(fields[9])
    if not inodes - {"0"}:
        return False  # gone, or orphaned by the process (inode 0) while the kernel flushes it
    fd_dir = Path(f"/proc/{pid}/fd")
    links = set()
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            links.add(os.readlink(fd_dir / fd))
    return any(f"socket:[{inode}]" in links for inode in inodes)


def pid_of(pod: Pod) -> int:
    assert pod.proc is not None, f"{pod.name} was never started"
    return pod.proc.pid


async def poll_until(check: Callable[[], bool], *, within: float, every: float = 0.1) -> float:
    """Poll a gauge that no event reports (/proc, DBSIZE) until `check` holds; the wait."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 -- /proc and Redis gauges signal no event
            await asyncio.sleep(every)
    return loop.time() - started


def tcp_sockets(pid: int, *, local_port: int | None = None, remote_port: int | None = None) -> int:
    """How many of the process's open files are TCP sockets with this local or remote port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if fields[9] != "0" and local_port in (None, local) and remote_port in (None, remote):
                inodes.add(f"socket:[{fields[9]}]")
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            count += os.readlink(fd_dir / fd) in inodes
    return count


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the processes: their sockets stay open, the kernel still ACKs, nothing answers."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def postgres_pids(server: Any) -> list[int]:
    """The postmaster of the server and every process it forked (the backends)."""
    postmaster = int((Path(server.datadir) / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # The parent pid is the 4th field, after the (parenthesised) command name.
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(entry.name))
    return [postmaster, *children]
