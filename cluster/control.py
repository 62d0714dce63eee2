"""The cluster's commands: start, stop, and drain, kill, restart or add a pod."""

from __future__ import annotations

import secrets
import shutil
import signal
import time
from pathlib import Path

from cluster import haproxy, pods, prometheus, stores
from cluster.procs import FORBIDDEN_PORTS, StartFailed, free_port, port_taken
from cluster.state import DRAINED, KILLED, READY, Pod, State

# How long a drained pod may take past DRAIN_SECONDS before it is killed.
DRAIN_MARGIN = 15.0


def start(root: Path, count: int, port: int) -> State:
    """Start the whole cluster, fresh; on any failure stop what was started and re-raise."""
    if count < 1:
        raise ValueError("a cluster needs at least one pod")
    old = State.load(root)
    if old is not None and running(old):
        raise StartFailed(f"a cluster already runs from {root}: `make cluster-stop` first")
    port = port or free_port()
    if port in FORBIDDEN_PORTS or port_taken(port):
        raise StartFailed(f"port {port} is taken: pick another with PORT=")
    # Throwaway: the last run's data and logs go (the lock is ours, held right now).
    for path in root.iterdir():
        if path.name != "lock":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (root / "logs").mkdir(parents=True)
    ports = {"haproxy": port}
    for name in ("postgres", "redis", "haproxy_stats", "prometheus", "worker_metrics"):
        ports[name] = free_port()
    state = State(root=root, ports=ports)
    try:
        _start(state, count)
    except BaseException:
        stop(state)
        raise
    return state


def _start(state: State, count: int) -> None:
    root, ports = state.root, state.ports
    state.procs["postgres"] = stores.start_postgres(root, ports["postgres"])
    state.save()
    env = pods.app_env(state)
    state.procs["redis"] = stores.start_redis(root, ports["redis"], env)
    state.save()
    secret_key = root / "secret_key"
    if not secret_key.exists():
        secret_key.touch(0o600)
        secret_key.write_text(secrets.token_urlsafe(50))
    pg, redis = ports["postgres"], ports["redis"]
    state.env = {
        **pods.recorded_settings(),
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": f"postgres://{stores.USER}@127.0.0.1:{pg}/{stores.DATABASE}",
        "REDIS_URL": f"redis://127.0.0.1:{redis}/0",
        "SECRET_KEY_FILE": str(secret_key),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "STATIC_ROOT": str(root / "static"),
        "CELERY_BEAT_SCHEDULE_FILENAME": str(root / "celerybeat-schedule"),
    }
    state.save()
    pods.manage(state, "migrate", "--noinput")
    # Hashed static files and a manifest, as a deployment serves them.
    state.env["STATIC_HASHED"] = "1"
    pods.manage(state, "collectstatic", "--noinput")
    del state.env["STATIC_HASHED"]  # the manifest in STATIC_ROOT turns it on (settings.py)
    logins = root / "demo_users.txt"
    logins.touch(0o600)
    logins.write_text(pods.manage(state, "demo_users"))
    state.pods = [Pod(n, free_port()) for n in range(1, count + 1)]
    for pod in state.pods:
        pods.spawn_pod(state, pod)
    state.save()
    for pod in state.pods:
        pods.wait_ready(state, pod)
    state.procs["haproxy"] = haproxy.start(state, env)
    state.save()
    state.procs["worker"] = pods.start_worker(state)
    state.save()
    state.procs["prometheus"] = prometheus.start(state, env)
    state.save()


def running(state: State) -> bool:
    return any(p.alive for p in state.procs.values()) or any(
        pod.proc is not None and pod.proc.alive for pod in state.pods
    )


def stop(state: State) -> None:
    """HAProxy first (no new connections), then pods and worker, then their stores."""
    if "haproxy" in state.procs:
        state.procs["haproxy"].stop()
    live = [pod.proc for pod in state.pods if pod.proc is not None]
    worker = [state.procs["worker"]] if "worker" in state.procs else []
    pods.stop_all([*live, *worker], pods.drain_seconds(state) + DRAIN_MARGIN)
    for name in ("prometheus", "redis"):
        if name in state.procs:
            state.procs[name].stop()
    if "postgres" in state.procs:
        stores.stop_postgres(state.procs["postgres"])
    state.path.unlink(missing_ok=True)


def drain(state: State, n: int) -> float:
    """HAProxy stops sending the pod new connections, then SIGTERM; seconds until it exited."""
    pod = state.pod(n)
    if pod.proc is None or not pod.proc.alive:
        raise StartFailed(f"{pod.name} is not running ({pod.state})")
    haproxy.set_state(state, pod, "drain")
    began = time.monotonic()
    pod.proc.signal(signal.SIGTERM)
    if not pod.proc.wait_gone(pods.drain_seconds(state) + DRAIN_MARGIN):
        pod.proc.signal(signal.SIGKILL)
        pod.proc.wait_gone(5.0)
        raise StartFailed(f"{pod.name} outlived DRAIN_SECONDS + {DRAIN_MARGIN:.0f}s: killed")
    took = time.monotonic() - began
    haproxy.set_state(state, pod, "maint")
    pod.state = DRAINED
    _pods_changed(state)
    return took


def kill(state: State, n: int) -> None:
    """SIGKILL, like a crash: HAProxy's health checks and Prometheus find out by themselves."""
    pod = state.pod(n)
    if pod.proc is None or not pod.proc.signal(signal.SIGKILL):
        raise StartFailed(f"{pod.name} is not running ({pod.state})")
    pod.proc.wait_gone(5.0)
    pod.state = KILLED
    state.save()


def restart(state: State, n: int) -> float | None:
    """Drain the pod if it runs, start it again on its port; back in HAProxy once it is UP."""
    pod = state.pod(n)
    took = drain(state, n) if pod.proc is not None and pod.proc.alive else None
    _serve(state, pod)
    return took


def add(state: State) -> tuple[Pod, str]:
    pod = Pod(max((p.n for p in state.pods), default=0) + 1, free_port())
    pods.spawn_pod(state, pod)
    pods.wait_ready(state, pod)
    state.pods.append(pod)
    state.save()
    how = haproxy.add_server(state, pod)
    haproxy.wait_status(state, pod, "UP", 10.0)
    _pods_changed(state)
    return pod, how


def _serve(state: State, pod: Pod) -> None:
    pods.spawn_pod(state, pod)
    state.save()
    pods.wait_ready(state, pod)
    haproxy.set_state(state, pod, "ready")
    # Ready for HAProxy too before the command returns: a rolling restart drains the next
    # pod only once this one takes connections.
    haproxy.wait_status(state, pod, "UP", 10.0)
    pod.state = READY
    _pods_changed(state)


def _pods_changed(state: State) -> None:
    state.save()
    haproxy.write_config(state)  # what a reload or a restart of HAProxy would serve
    prometheus.write_targets(state)
