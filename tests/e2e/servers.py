"""The real processes behind the end-to-end tests: throwaway stacks and uvicorn pods.

A `Stack` is one fresh PostgreSQL database and one Redis server (both throwaway,
started by the test run), migrated with the real `manage.py`, with API tokens
and passwords for alice, bob and charlie. A `Pod` is one uvicorn process
serving `project.asgi:application` over that stack; several pods behave like
several Kubernetes pods behind a load balancer. Fault tests start extra pods
with `Stack.start_pod` and SIGKILL them with `Pod.kill`. The HTTP client that
talks to them is tests/e2e/http_client.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import psycopg
from psycopg import sql

from cluster.procs import free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN_RE = re.compile(r"^ct_[A-Za-z0-9_-]+$")
DEMO_USER_RE = re.compile(r"^\s*(\w+)\s+password:\s+(\S+)\s+token:\s+(\S+)\s*$")
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
COMMAND_TIMEOUT = 60.0
UVICORN_ARGS = (
    *("--ws", "realtime.wsserver:WebSocketProtocol"),
    *("--ws-max-size", "65536", "--ws-per-message-deflate", "false"),
)


class PodDied(RuntimeError):
    """A pod exited while it should be serving; the message carries its output."""


def base_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """A clean environment: none of the caller's settings (DJANGO_*, *_FILE secrets) leak in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    # A pod stopped with sockets open drains them over DRAIN_SECONDS (20 by default) and
    # Pod.stop kills it after 5 s: tests that drain on purpose set their own.
    env["DRAIN_SECONDS"] = "1"
    env.update(overrides)
    return env


def create_database(host: str, port: int, user: str, password: str | None, name: str) -> None:
    """Create a fresh, empty database, dropping any left from an earlier run."""
    with psycopg.connect(
        host=host,
        port=port,
        user=user,
        password=password or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def manage(env: Mapping[str, str], *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run `python manage.py ARGS` against the stack and return its stdout."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"manage.py {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def issue_tokens(env: Mapping[str, str], usernames: list[str]) -> dict[str, str]:
    """`manage.py issue_token NAME --create` per user, in parallel; stdout is the token only."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, "manage.py", "issue_token", name, "--create"],
            cwd=REPO,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in usernames
    }
    tokens = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
        assert proc.returncode == 0, f"issue_token {name} exited {proc.returncode}: {err}"
        # Its stdout must be the token and nothing else, so scripts can capture it.
        token = out.removesuffix("\n")
        assert TOKEN_RE.match(token), f"issue_token printed more than a token: {out!r}"
        tokens[name] = token
    return tokens


def parse_demo_users(output: str) -> dict[str, tuple[str, str]]:
    """{username: (password, token)} from `manage.py demo_users` output."""
    users = {}
    for line in output.splitlines():
        match = DEMO_USER_RE.match(line)
        if match:
            users[match[1]] = (match[2], match[3])
    return users


@dataclass(eq=False)
class Pod:
    """One uvicorn process serving the app on a loopback port."""

    name: str
    env: Mapping[str, str]
    log_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    @property
    def origin(self) -> str:
        """The Origin a browser on this pod's pages would send."""
        return self.url

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, ready_timeout: float = READY_TIMEOUT) -> Pod:
        """Start on a free port and return once GET /healthz answers."""
        for attempt in range(3):
            self.port = free_port()
            self._spawn()
            try:
                self.wait_ready(ready_timeout)
                return self
            except PodDied:
                # Another process took the port between free_port() and uvicorn's bind.
                if attempt == 2 or "address already in use" not in self.output().lower():
                    raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.log_path = self.log_dir / f"{self.name}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "project.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *UVICORN_ARGS,
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=dict(self.env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.assert_alive()
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"{self.url}/healthz", timeout=1.0
                ) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise PodDied(f"{self.name} not ready after {timeout}s:\n{self.output()}")
            # Polling a process that offers no readiness event; bounded by the deadline above.
            time.sleep(0.05)

    def output(self) -> str:
        """What the process wrote to stdout and stderr so far."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def last_words(self, tail: int = 1500) -> str:
        """The last line it wrote (an exception's, usually), then the tail of its output."""
        output = self.output().rstrip()
        last = output.rsplit("\n", 1)[-1]
        return f"{self.name}: {last}\n...\n{output[-tail:]}"

    def assert_alive(self) -> None:
        if self.proc is None:
            raise PodDied(f"{self.name} was never started")
        code = self.proc.poll()
        if code is not None:
            raise PodDied(f"{self.name} (port {self.port}) exited with {code}:\n{self.output()}")

    def stop(self) -> None:
        """Terminate gracefully, kill if it does not exit in time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self._close_log()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to close its sockets or flush anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(frozen=True)
class Stack:
    """A migrated database and a Redis server, with users and the env the app needs."""

    env: Mapping[str, str]
    tokens: Mapping[str, str]
    passwords: Mapping[str, str]
    log_dir: Path

    def start_pod(
        self,
        name: str,
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> Pod:
        """A new pod on this stack; `env` overrides settings for it alone (say, the limits)."""
        return Pod(name, {**self.env, **(env or {})}, self.log_dir).start(ready_timeout)

    def manage(self, *args: str) -> str:
        return manage(self.env, *args)


class SpawnPod(Protocol):
    """The `spawn_pod` fixture: start an extra pod, stopped when the test ends."""

    def __call__(self, name: str, env: Mapping[str, str] | None = None) -> Pod: ...
