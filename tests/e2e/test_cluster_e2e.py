"""`make cluster` end to end: a rolling restart under load through HAProxy, and its Prometheus.

The cluster (python -m cluster) runs in a directory of the test's own with 3 pods and
DRAIN_SECONDS=2. Every pod is drained and restarted in turn while clients that come back
(faults.ReturningClient, resuming with `since`) publish and listen through HAProxy, and a
chat-loadtest run through HAProxy spans each restart. chat-loadtest does not reconnect, so
it judges each of its connections up to the drain that closed it: closed with 1012, not
cut, nothing skipped, doubled or reordered until then. Exactly once and in order across
the reconnects is the returning clients' ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.state import State
from tests.e2e.faults import Ledger, ReturningClient, client_factory
from tests.e2e.http_client import Http, history
from tests.e2e.processes import poll_until
from tests.e2e.servers import REPO, Pod, base_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

PODS = 3
SETTINGS = {
    "DRAIN_SECONDS": "2",
    # Past a person's flood limits, as load tests run (docs/loadtest.md).
    "PUBLISH_RATE": "100000",
    "PUBLISH_BURST": "100000",
    "USER_PUBLISH_RATE": "100000",
    "USER_PUBLISH_BURST": "100000",
}
LOAD_ROOMS, CONNECTIONS, PUBLISHERS = 3, 45, 3
WRITERS = 3  # returning clients, each publishing into the ledger's room


def cluster(root: Path, *args: str, timeout: float = 60.0) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cluster", "--dir", str(root), *args],
        cwd=REPO,
        env=base_env(SETTINGS),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"cluster {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture
def running(tmp_path: Path) -> Iterator[State]:
    """A 3-pod cluster of the test's own; stopped, and anything it left killed, at the end."""
    root = tmp_path / "cluster"
    try:
        cluster(root, "start", "--pods", str(PODS), "--port", "0")
        state = State.load(root)
        assert state is not None
        yield state
    finally:
        left = State.load(root)
        subprocess.run(
            [sys.executable, "-m", "cluster", "--dir", str(root), "stop"],
            cwd=REPO,
            env=base_env(SETTINGS),
            timeout=60,
            check=False,
        )
        for proc in [*(left.procs.values() if left else []), *_pod_procs(left)]:
            proc.stop(1.0)  # only if `stop` failed: these are the cluster's own pids


def _pod_procs(state: State | None) -> list[Any]:
    return [pod.proc for pod in state.pods if pod.proc] if state else []


@pytest.fixture
async def returning() -> AsyncIterator[Callable[..., ReturningClient]]:
    async with client_factory(ReturningClient, tolerant=True) as make:
        yield make


@pytest.fixture(autouse=True)
def _pods_stay_up() -> None:
    """This test runs a cluster of its own: the shared pods of tests/e2e/conftest.py stay off."""


@pytest.fixture
def loadtest() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start chat-loadtest (output to a file); killed if it still runs when the test ends."""
    started: list[subprocess.Popen[bytes]] = []

    def start(log: Path, *args: str) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            started.append(
                subprocess.Popen(
                    [str(Path(sys.executable).parent / "chat-loadtest"), *args],
                    env=base_env({}),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # A group of its own: its worker processes are ended with it.
                    start_new_session=True,
                )
            )
        return started[-1]

    yield start
    for child in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(5.0)


async def cluster_async(root: Path, *args: str) -> str:
    """A cluster command while the test's sockets keep reading."""
    return await asyncio.to_thread(cluster, root, *args)


def prometheus(state: State, query: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{state.ports['prometheus']}"
    answer = Http(url).request_sync("GET", "/api/v1/query?query=" + urllib.parse.quote(query))
    assert answer.status == 200, answer.text
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def by_pod(series: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"].get("pod", "?"): float(s["value"][1]) for s in series}


def check_load_report(report: dict[str, Any], pod: str) -> None:
    """What chat-loadtest saw around one pod's restart: its sockets there closed with 1012."""
    conns, correct = report["connections"], report["correctness"]
    where = f"chat-loadtest around {pod}'s restart"
    assert conns["failed"] == 0, (where, conns)
    assert conns["attempted"] == conns["ok"] + conns["dropped"] == CONNECTIONS + PUBLISHERS
    # HAProxy spread them: some were on the drained pod.
    assert conns["dropped"] > 0, (where, conns)
    reasons = conns["failure_reasons"]  # "dropped subscriber: server closed with 1012", ...
    assert all(why.endswith(": server closed with 1012") for why in reasons), (where, reasons)
    assert sum(reasons.values()) == conns["dropped"], (where, reasons)
    assert correct["received"] > 0, (where, correct)
    assert correct["duplicated"] == correct["out_of_order"] == 0, (where, correct)
    assert correct["lost"] == correct["lost_at_end"], (where, "holes in a connection", correct)
    assert report["errors"] == {}, (where, report["errors"])
    assert report["aborted"] in (None, "interrupted"), (where, report["aborted"])


async def test_a_rolling_restart_through_haproxy_loses_doubles_and_reorders_nothing(
    running: State,
    returning: Callable[..., ReturningClient],
    loadtest: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    state, root = running, running.root
    tokens_file = tmp_path / "tokens.json"
    cluster(root, "manage", "provision_load", "--users", "60", "--rooms", str(LOAD_ROOMS + 1),
            "--prefix", "load", "--out", str(tokens_file))  # fmt: skip
    provisioned = json.loads(tokens_file.read_text())
    front = Pod("haproxy", {}, tmp_path, port=state.ports["haproxy"])
    # The ledger's room is the one chat-loadtest leaves alone.
    room = provisioned["rooms"][LOAD_ROOMS]
    writers = [
        returning(f"writer{i}", provisioned["tokens"][-1 - i], [front], room)
        for i in range(WRITERS)
    ]
    ledger = Ledger()
    for writer in writers:
        await writer.connection()

    async def restart_under_load(n: int) -> tuple[str, dict[str, Any]]:
        """Restart pod n while a chat-loadtest run goes through HAProxy; its report."""
        out = tmp_path / f"load-pod{n}"
        out.mkdir()
        load = loadtest(
            out / "output.log",
            *("--url", front.ws_url, "--tokens", str(tokens_file), "--rooms", str(LOAD_ROOMS)),
            *("--connections", str(CONNECTIONS), "--publishers", str(PUBLISHERS)),
            # Longer than a restart: the test stops it once the pod is back.
            *("--rate", "30", "--warmup", "1", "--duration", "60", "--max-seconds", "70"),
            *("--json", str(out / "report.json"), "--ready-file", str(out / "ready")),
        )
        await poll_until((out / "ready").exists, within=20.0)
        said = await cluster_async(root, "restart", str(n))
        # It does not reconnect, so it may wait out --duration for an ack a drained
        # publisher never got: Ctrl-C, and it reports what it saw.
        if load.poll() is None:
            load.send_signal(signal.SIGINT)
        await asyncio.to_thread(load.wait, 15.0)
        report = out / "report.json"
        assert report.exists(), (out / "output.log").read_text()[-2000:]
        return said, json.loads(report.read_text())

    rolled = asyncio.Event()

    async def publish(writer: ReturningClient) -> None:
        n = 0
        while not rolled.is_set():
            batch = [(f"{writer.name}.{n + i}", f"{writer.name} says {n + i}") for i in range(5)]
            await writer.publish_all(batch, on_ack=ledger)
            n += len(batch)
            await asyncio.sleep(0.05)  # a steady trickle across the whole rolling restart

    async def roll() -> list[tuple[str, dict[str, Any]]]:
        try:
            return [await restart_under_load(pod.n) for pod in state.pods]
        finally:
            rolled.set()

    async with asyncio.TaskGroup() as group:
        for writer in writers:
            group.create_task(publish(writer))
        restarts = group.create_task(roll())
    said = [line for line, _ in restarts.result()]
    assert all("restarted: drained in" in line for line in said), said

    # Every message once, in order, to every writer, across all its reconnects.
    stored = await history(Http(front.url, token=writers[0].token), room)
    for writer in writers:
        await writer.wait_for_seq(len(stored))
        ledger.delivered(writer.name, room, writer.frames, first=1)
    ledger.check(room, stored)
    assert len(stored) >= 100, f"only {len(stored)} messages published during the restart"
    # Each was moved at least once by a drain, which closes with 1012 (Service Restart).
    codes = [writer.close_codes for writer in writers]
    assert all(codes), codes
    assert {code for cs in codes for code in cs} == {1012}, codes

    for pod, (_, report) in zip(state.pods, restarts.result(), strict=True):
        check_load_report(report, pod.name)

    # Prometheus scrapes every pod, restarted on its port: one series each, each up.
    pods = {pod.name for pod in state.pods}

    def scraped() -> bool:
        up = by_pod(prometheus(state, 'up{job="chat"}'))
        connections = by_pod(prometheus(state, 'chat_ws_connections{job="chat"}'))
        # The writers' sockets, wherever HAProxy put them.
        return up == dict.fromkeys(pods, 1.0) and (
            set(connections) == pods and sum(connections.values()) == WRITERS
        )

    try:
        await poll_until(scraped, within=15.0, every=0.5)
    except TimeoutError:
        raise AssertionError(
            f"up: {prometheus(state, 'up')}\n"
            f"chat_ws_connections: {prometheus(state, 'chat_ws_connections')}"
        ) from None
