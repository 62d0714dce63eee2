"""The app's processes (uvicorn pods, the Celery worker, manage.py) with the cluster's settings."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cluster.procs import POLL, Proc, StartFailed, spawn, tail, wait_http
from cluster.state import REPO, Pod, State

# The production command (README), on loopback.
UVICORN = (
    *("-m", "uvicorn", "project.asgi:application"),
    *("--ws", "realtime.wsserver:WebSocketProtocol"),
    *("--ws-max-size", "65536", "--ws-per-message-deflate", "false"),
    *("--timeout-graceful-shutdown", "5"),
)
READY_PATH = "/readyz"
START_TIMEOUT = 30.0
# Settings the cluster sets itself; the caller's values (and their _FILE forms) are dropped.
OWNED = frozenset(
    {
        "DATABASE_URL",
        "DATABASE_PASSWORD",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "SECRET_KEY",
        "ALLOWED_HOSTS",
        "STATIC_ROOT",
        "STATIC_HASHED",
        "DJANGO_SETTINGS_MODULE",
        "CELERY_BEAT_SCHEDULE_FILENAME",
        "CELERY_METRICS_PORT",
        "PROMETHEUS_MULTIPROC_DIR",
    }
)
SETTING_NAME = re.compile(r"env\.(?:str|int|float|bool|list)\(\s*['\"]([A-Z][A-Z0-9_]*)['\"]")


def recorded_settings() -> dict[str, str]:
    """The caller's values of the app's plain settings (DRAIN_SECONDS, PUBLISH_RATE, ...).

    Recorded at start so pods started later (restart, add) run with the same ones.
    Secrets (read with `secret(...)` in project/settings.py) are never recorded.
    """
    names = set(SETTING_NAME.findall((REPO / "project" / "settings.py").read_text()))
    return {name: os.environ[name] for name in sorted(names - OWNED) if name in os.environ}


def app_env(state: State) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.removesuffix("_FILE") not in OWNED}
    env.update(state.env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def drain_seconds(state: State) -> float:
    return float(app_env(state).get("DRAIN_SECONDS", "20"))


def manage(state: State, *args: str, timeout: float = 120.0) -> str:
    """`manage.py ARGS` against the cluster's database; its stdout (output also in the log)."""
    done = subprocess.run(  # noqa: S603 -- our own command line
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=app_env(state),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    with (state.root / "logs" / "manage.log").open("a") as log:
        log.write(f"$ manage.py {' '.join(args[:1])}\n{done.stderr}")
    if done.returncode != 0:
        raise StartFailed(f"manage.py {args[0]} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def spawn_pod(state: State, pod: Pod) -> None:
    """Start the pod's uvicorn on its port; `wait_ready` waits for it."""
    command = [sys.executable, *UVICORN, "--host", "127.0.0.1", "--port", str(pod.port)]
    pod.proc = spawn(command, log_of(state, pod), app_env(state), cwd=REPO)


def wait_ready(state: State, pod: Pod) -> None:
    assert pod.proc is not None  # noqa: S101 -- spawn_pod ran
    wait_http(f"{pod.url}{READY_PATH}", pod.proc, log_of(state, pod), START_TIMEOUT)


def log_of(state: State, pod: Pod) -> Path:
    return state.root / "logs" / f"{pod.name}.log"


def start_worker(state: State) -> Proc:
    """A Celery worker with beat embedded (-B): the cluster's only one, so the chores run once.

    Its metrics (chat_celery_tasks_total) on a port of its own, its prefork children's
    added up through an empty PROMETHEUS_MULTIPROC_DIR (docs/operations.md).
    """
    log = state.root / "logs" / "worker.log"
    multiproc = state.root / "worker-metrics"
    multiproc.mkdir()
    env = {
        **app_env(state),
        "CELERY_METRICS_PORT": str(state.ports["worker_metrics"]),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    command = [sys.executable, "-m", "celery", "-A", "project", "worker", "-B", "-l", "info"]
    proc = spawn(command, log, env, cwd=REPO)
    wait_log(proc, log, "ready.", START_TIMEOUT)
    return proc


def wait_log(proc: Proc, log: Path, marker: str, timeout: float) -> None:
    """Until the process writes `marker` (Celery's "ready."); it answers no HTTP to poll."""
    deadline = time.monotonic() + timeout
    while marker not in log.read_text(errors="replace"):
        if not proc.alive or time.monotonic() > deadline:
            raise StartFailed(f"{log}: no {marker!r} within {timeout:.0f}s:\n{tail(log)}")
        time.sleep(POLL)


def stop_all(procs: Sequence[Proc], timeout: float) -> None:
    """SIGTERM to all at once, then wait for each; SIGKILL whatever outlives `timeout`."""
    for proc in procs:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        if not proc.wait_gone(max(0.0, deadline - time.monotonic())):
            proc.signal(signal.SIGKILL)
            proc.wait_gone(5.0)
