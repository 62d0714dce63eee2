"""HAProxy in front of the pods: its configuration, and its runtime API over a stats socket."""

from __future__ import annotations

import csv
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from cluster.pods import READY_PATH
from cluster.procs import POLL, Proc, StartFailed, http_status, spawn, tail
from cluster.state import DRAINED, Pod, State

BACKEND = "pods"
# Health checks: every second; two failures take a pod out, one success puts it back.
CHECK = "check inter 1s fall 2 rise 1"
CONFIG = """\
# Written by `python -m cluster` from var/cluster/state.json; regenerated when pods change.
global
    # No maxconn: HAProxy sizes it from the file descriptor limit (ulimit -n).
    stats socket {socket} mode 600 level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout queue 10s
    # An upgraded websocket is a tunnel: idle chat sockets stay open this long.
    timeout tunnel 1h
    timeout client-fin 5s
    # A connection refused by a pod that just died goes to another one.
    retries 3
    option redispatch 1

frontend chat
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    # Websockets are long-lived: count open connections, not requests.
    balance leastconn
    option httpchk GET {ready_path}
    http-check send ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
{servers}

frontend stats
    bind 127.0.0.1:{stats_port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /
    stats refresh 2s
"""


def root(state: State) -> Path:
    return state.root / "haproxy"


def socket_path(state: State) -> Path:
    return root(state) / "admin.sock"


def server_line(pod: Pod) -> str:
    # A pod drained on purpose stays out (maintenance) if HAProxy is reloaded meanwhile.
    disabled = " disabled" if pod.state == DRAINED else ""
    return f"    server {pod.name} 127.0.0.1:{pod.port} {CHECK}{disabled}"


def write_config(state: State) -> Path:
    path = root(state) / "haproxy.cfg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        CONFIG.format(
            socket=socket_path(state),
            port=state.ports["haproxy"],
            stats_port=state.ports["haproxy_stats"],
            backend=BACKEND,
            ready_path=READY_PATH,
            servers="\n".join(server_line(pod) for pod in state.pods),
        )
    )
    return path


def binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found is None:
        raise StartFailed("haproxy not found: `make services` installs it")
    return found


def version() -> tuple[int, int]:
    """HAProxy's major.minor (`add server` on the runtime API needs 2.6)."""
    out = subprocess.run(  # noqa: S603 -- our own command line
        [binary(), "-v"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    major, minor = out.split()[2].split(".")[:2]
    return int(major), int(minor)


def start(state: State, env: dict[str, str]) -> Proc:
    """Check the configuration, then run HAProxy in master-worker mode (SIGUSR2 reloads)."""
    config, log = write_config(state), state.root / "logs" / "haproxy.log"
    check = subprocess.run(  # noqa: S603 -- our own command line
        [binary(), "-c", "-q", "-f", str(config)], capture_output=True, text=True, timeout=10
    )
    if check.returncode != 0:
        raise StartFailed(f"{config} is invalid:\n{check.stdout}{check.stderr}")
    proc = spawn([binary(), "-W", "-db", "-f", str(config)], log, env)
    deadline = time.monotonic() + 10.0
    while http_status(f"http://127.0.0.1:{state.ports['haproxy_stats']}/") != 200:
        if not proc.alive or time.monotonic() > deadline:
            raise StartFailed(f"haproxy did not start; see {log}:\n{tail(log)}")
        time.sleep(POLL)
    return proc


def command(state: State, line: str) -> str:
    """One runtime API command over the stats socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5.0)
        conn.connect(str(socket_path(state)))
        conn.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode().strip()


def set_state(state: State, pod: Pod, admin: str) -> None:
    """`set server pods/podN state ready|drain|maint`: drain sends it no new connections."""
    answer = command(state, f"set server {BACKEND}/{pod.name} state {admin}")
    if answer:
        raise RuntimeError(f"haproxy: set server {pod.name} state {admin}: {answer}")


def add_server(state: State, pod: Pod) -> str:
    """Put a new pod in the backend: the runtime API on HAProxy >= 2.6, else a reload."""
    write_config(state)
    if version() >= (2, 6):
        # Dynamic servers take no default-server settings and start in maintenance.
        line = f"add server {BACKEND}/{pod.name} 127.0.0.1:{pod.port} {CHECK}"
        answer = command(state, line)
        if "New server registered" in answer:
            command(state, f"enable health {BACKEND}/{pod.name}")
            set_state(state, pod, "ready")
            return "added through the runtime API"
    reload(state)
    return "added by reloading HAProxy"


def reload(state: State) -> None:
    """Reload the written configuration; the old worker keeps its open tunnels until they end."""
    state.procs["haproxy"].signal(signal.SIGUSR2)


def servers(state: State) -> dict[str, dict[str, str]]:
    """`show stat` for the backend's servers: {podN: {status, scur (open connections), ...}}."""
    rows = csv.DictReader(command(state, "show stat").lstrip("# ").splitlines())
    return {row["svname"]: row for row in rows if row["pxname"] == BACKEND and row["type"] == "2"}


def wait_status(state: State, pod: Pod, want: str, timeout: float) -> None:
    """Until HAProxy's health checks report the pod `want` (UP, DOWN, ...)."""
    deadline = time.monotonic() + timeout
    while servers(state).get(pod.name, {}).get("status") != want:
        if time.monotonic() > deadline:
            status = servers(state).get(pod.name, {}).get("status")
            raise StartFailed(f"haproxy reports {pod.name} {status}, not {want}, after {timeout}s")
        time.sleep(POLL)
