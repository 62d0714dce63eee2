"""The real processes behind the end-to-end tests, and a small HTTP client to talk to them.

A `Stack` is one fresh PostgreSQL database and one Redis server (both throwaway,
started by the test run), migrated with the real `manage.py`, with API tokens
and passwords for alice, bob and charlie. A `Pod` is one uvicorn process
serving `project.asgi:application` over that stack; several pods behave like
several Kubernetes pods behind a load balancer. Fault tests start extra pods
with `Stack.start_pod` and SIGKILL them with `Pod.kill`.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message as HeaderMessage
from pathlib import Path
from typing import IO, Any, Protocol

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[2]
TOKEN_RE = re.compile(r"^ct_[A-Za-z0-9_-]+$")
DEMO_USER_RE = re.compile(r"^\s*(\w+)\s+password:\s+(\S+)\s+token:\s+(\S+)\s*$")
# The machine's own services: the tests must never touch them.
FORBIDDEN_PORTS = frozenset({5432, 6379})
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
COMMAND_TIMEOUT = 60.0
HTTP_TIMEOUT = 10.0
UVICORN_ARGS = (
    *("--ws", "realtime.wsserver:WebSocketProtocol"),
    *("--ws-max-size", "65536", "--ws-per-message-deflate", "false"),
)


class PodDied(RuntimeError):
    """A pod exited while it should be serving; the message carries its output."""


def free_port() -> int:
    """A loopback port nobody listens on right now (the pod retries if it loses the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


# HTTP


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names lowercased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx answers to the caller: a login's 302 is the answer we check."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HeaderMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class Http:
    """A small HTTP client (urllib, no proxies, no redirects) with a cookie jar.

    Async methods run the blocking call in a thread so websocket readers keep running.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        jar: http.cookiejar.CookieJar | None = None,
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.jar = jar if jar is not None else http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPCookieProcessor(self.jar),
            _NoRedirect(),
        )

    def on(self, base_url: str) -> Http:
        """The same credentials (token or session cookies) against another pod."""
        return Http(base_url, token=self.token, jar=self.jar)

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar if c.value is not None)

    def request_sync(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> Response:
        all_headers = {"Accept": "application/json"}
        if self.token is not None:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        all_headers.update(headers or {})
        request = urllib.request.Request(  # noqa: S310 -- always a loopback http:// URL
            self.base_url + path, data=data, method=method, headers=all_headers
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return Response(response.status, _headers(response.headers), response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, _headers(error.headers), error.read())

    async def request(self, method: str, path: str, **kwargs: Any) -> Response:
        return await asyncio.to_thread(self.request_sync, method, path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Response:
        return await self.request("POST", path, json_body=json_body, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)


def _headers(message: HeaderMessage) -> dict[str, str]:
    return {name.lower(): value for name, value in message.items()}


def login(base_url: str, username: str, password: str) -> Http:
    """Log in through the real login form, the way a browser does; the jar holds the session."""
    client = Http(base_url)
    page = client.request_sync("GET", "/accounts/login/", headers={"Accept": "text/html"})
    assert page.status == 200, page.text
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert match, "the login page has no CSRF token"
    answer = client.request_sync(
        "POST",
        "/accounts/login/",
        form={"username": username, "password": password, "csrfmiddlewaretoken": match[1]},
        headers={"Accept": "text/html"},
    )
    assert answer.status == 302, f"login of {username} failed: {answer.status} {answer.text[:300]}"
    assert client.cookie("sessionid"), "login set no session cookie"
    return client


# API helpers shared by the tests.


def unique_slug(prefix: str = "e2e") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_room_sync(client: Http, *, private: bool = False, prefix: str = "e2e") -> str:
    """A fresh room owned by the client's user; each test gets its own."""
    slug = unique_slug(prefix)
    answer = client.request_sync(
        "POST", "/api/rooms", json_body={"slug": slug, "title": slug, "private": private}
    )
    assert answer.status == 201, answer.text
    return slug


async def last_seq(client: Http, slug: str) -> int:
    """The room's last_seq as GET /api/rooms reports it."""
    answer = await client.get("/api/rooms")
    assert answer.status == 200, answer.text
    room = next((r for r in answer.json()["rooms"] if r["slug"] == slug), None)
    assert room is not None, f"{slug} is not in the user's rooms"
    value: int = room["last_seq"]
    return value


async def history(client: Http, slug: str, after: int = 0) -> list[dict[str, Any]]:
    """Every stored message after `after`, paging through GET /api/rooms/<slug>/messages."""
    messages: list[dict[str, Any]] = []
    while True:
        answer = await client.get(f"/api/rooms/{slug}/messages?after={after}&limit=200")
        assert answer.status == 200, answer.text
        page = answer.json()
        messages.extend(page["messages"])
        if not page["has_more"]:
            return messages
        after = page["messages"][-1]["seq"]
