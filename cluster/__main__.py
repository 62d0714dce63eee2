"""`python -m cluster start|stop|status|drain N|kill N|restart N|add|manage ARGS` (make cluster)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from cluster import control, haproxy, pods
from cluster.procs import StartFailed
from cluster.state import DEFAULT_ROOT, REPO, State, locked

DEFAULT_PORT = 8800
READ_ONLY = frozenset({"status", "manage"})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    p.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("CLUSTER_DIR", DEFAULT_ROOT)),
        help="state, data and logs (default var/cluster, or $CLUSTER_DIR)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a fresh cluster, detached")
    start.add_argument("--pods", type=int, default=3)
    start.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"HAProxy's (default {DEFAULT_PORT}; 0: any)"
    )
    sub.add_parser("stop", help="stop everything; logs stay in DIR/logs")
    sub.add_parser("status", help="processes, ports, and HAProxy's view of each pod")
    for name, what in (
        ("drain", "take out of HAProxy, SIGTERM, wait until it exits"),
        ("kill", "SIGKILL, like a crash"),
        ("restart", "drain (if running) and start again on its port"),
    ):
        sub.add_parser(name, help=what).add_argument("pod", type=int, help="its number (pod2: 2)")
    sub.add_parser("add", help="start one more pod and add it to HAProxy and Prometheus")
    manage = sub.add_parser("manage", help="manage.py ARGS against the cluster's database")
    manage.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = args.dir.resolve()
    try:
        if args.command in READ_ONLY:
            return run(loaded(root), args)  # no waiting behind a drain in progress
        with locked(root):
            if args.command == "start":
                state = control.start(root, args.pods, args.port)
                print(summary(state))
                return 0
            return run(loaded(root), args)
    except (StartFailed, LookupError, ValueError, RuntimeError) as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1


def loaded(root: Path) -> State:
    state = State.load(root)
    if state is None:
        raise StartFailed(f"no cluster runs from {root}: `make cluster` starts one")
    return state


def run(state: State, args: argparse.Namespace) -> int:
    if args.command == "stop":
        control.stop(state)
        print(f"cluster stopped; logs in {state.root / 'logs'}")
    elif args.command == "status":
        print(status(state))
    elif args.command == "drain":
        seconds = control.drain(state, args.pod)
        print(f"pod{args.pod} drained: out of HAProxy, exited {seconds:.1f}s after SIGTERM")
    elif args.command == "kill":
        control.kill(state, args.pod)
        print(f"pod{args.pod} killed (SIGKILL); `make cluster-restart POD={args.pod}` revives it")
    elif args.command == "restart":
        took = control.restart(state, args.pod)
        drained = f"drained in {took:.1f}s, " if took is not None else ""
        print(f"pod{args.pod} restarted: {drained}ready and UP in HAProxy")
    elif args.command == "add":
        pod, how = control.add(state)
        print(f"{pod.name} on port {pod.port}, {how}, UP; Prometheus scrapes it")
    elif args.command == "manage":
        env = pods.app_env(state)
        command = [sys.executable, "manage.py", *args.args]
        return subprocess.run(command, cwd=REPO, env=env, check=False).returncode  # noqa: S603
    return 0


def summary(state: State) -> str:
    logins = (state.root / "demo_users.txt").read_text().rstrip()
    return f"""\
Cluster up: {len(state.pods)} pods behind HAProxy, PostgreSQL, Redis, a Celery worker, Prometheus.

  Open      http://127.0.0.1:{state.ports["haproxy"]}/
{_indent(logins)}

  Prometheus  http://127.0.0.1:{state.ports["prometheus"]}/  (alert rules: {state.rules})
  HAProxy     http://127.0.0.1:{state.ports["haproxy_stats"]}/  (stats; /metrics)
  Logs        {state.root / "logs"}   State {state.path}

make cluster-status | cluster-drain POD=2 | cluster-kill POD=2 | cluster-restart POD=2
     cluster-add | cluster-stop"""


def status(state: State) -> str:
    ports = state.ports
    lines = [f"cluster from {state.root}: open http://127.0.0.1:{ports['haproxy']}/"]
    for name in ("haproxy", "postgres", "redis", "prometheus", "worker"):
        proc = state.procs.get(name)
        port = f"127.0.0.1:{ports[name]}" if name in ports else ""
        alive = "running" if proc is not None and proc.alive else "NOT RUNNING"
        lines.append(f"  {name:<11} {port:<16} pid {proc.pid if proc else '-':<8} {alive}")
    try:
        seen = haproxy.servers(state)
    except OSError:
        seen = {}
    lines.append("  pod    port   pid      process      cluster  haproxy  connections")
    for pod in state.pods:
        alive = "running" if pod.proc is not None and pod.proc.alive else "exited"
        row = seen.get(pod.name, {})
        pid = pod.proc.pid if pod.proc else "-"
        lines.append(
            f"  {pod.name:<6} {pod.port:<6} {pid:<8} {alive:<12} {pod.state:<8} "
            f"{row.get('status', '?'):<8} {row.get('scur', '?')}"
        )
    lines.append(f"  alert rules: {state.rules}")
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
