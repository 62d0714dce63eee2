"""One load-test worker process: its slice of the connections, driven through the phases.

The coordinator keeps the workers in step over pipes (loadtest.link lists the messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import signal
import ssl
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

from websockets.uri import WebSocketURI, parse_uri

from loadtest.client import Connection, Phase, Role, resolve, tls_context
from loadtest.config import Config
from loadtest.link import ParentLink
from loadtest.report import Correctness, Counters
from loadtest.socketio import SocketIOConnection, is_socketio

monotonic_ns = time.monotonic_ns
TICK_SECONDS = 1.0
DRAIN_POLL_SECONDS = 0.1
# The publishers wake at most this often: what fell due meanwhile is sent together. A sleep
# per message cost a quarter of a worker's CPU at 3,200 msg/s each (py-spy), CPU the server
# under test then lacked. Each message carries the time it was sent, so latency is not
# affected, and the rate is kept on average.
PUBLISH_TICK_SECONDS = 0.002


@dataclass
class WorkerResult:
    counters: Counters
    correctness: Correctness
    recv_ms: bytes
    latency_us: bytes
    ack_us: bytes
    connect_us: bytes
    failures: dict[str, int] = field(default_factory=dict)


class Worker:
    def __init__(self, config: Config, index: int, commands: Pipe, reports: Pipe, t0_ns: int):
        self.config = config
        self.index = index
        self.link = ParentLink(commands, reports, self._on_stop)
        self.t0_ns = t0_ns
        self.run_id = secrets.token_hex(4)
        self.counters = Counters()
        self.correctness = Correctness()
        self.failures: dict[str, int] = {}
        # Samples since the last tick; shipped to the parent and started afresh.
        self.recv_ms = array("i")
        self.latency_us = array("i")
        self.ack_us = array("i")
        self.connect_us = array("i")
        self.outstanding: dict[str, int] = {}
        self.last_acked: dict[str, int] = {}
        self.subscribers: list[Connection] = []
        self.publishers: list[Connection] = []
        self.pending = 0  # planned, neither ready nor failed
        self.slots: asyncio.Semaphore | None = None  # handshakes allowed in flight
        self.settled: asyncio.Future[None] | None = None
        self.acks_in: asyncio.Event | None = None  # set once nothing is outstanding
        self.stopped = False
        self.closing = False

    # Phases

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.link.listen(loop)
        ticker = loop.create_task(self._tick())
        try:
            await self._connect_all()
            self.link.send(("ready",))
            start = await self.link.command("start")
            if start is not None:
                await self._publish(start[1], start[2])
                await self._await_acks(start[2] + int(self.config.drain * 1e9))
            self.link.send(("acked", dict(self.last_acked)))
            final = await self.link.command("final")
            last_acked = final[1] if final is not None else dict(self.last_acked)
            if final is not None:
                await self._drain(last_acked, final[2])
            self.closing = True
            for conn in self.subscribers + self.publishers:
                conn.close()
            for conn in self.subscribers:
                if conn.check is not None and conn.check.base is not None:
                    self.correctness.add_stream(conn.check, last_acked.get(conn.room or "", 0))
        finally:
            ticker.cancel()
            self.link.stop_listening(loop)
        self.link.send(("result", self._result()))

    async def _connect_all(self) -> None:
        cfg, k, procs = self.config, self.index, self.config.procs
        loop = asyncio.get_running_loop()
        sub_uri, pub_uri = parse_uri(cfg.url), parse_uri(cfg.publish_url)
        try:
            sub_addr, pub_addr = await resolve(sub_uri), await resolve(pub_uri)
        except OSError as error:
            # Nothing can connect: every planned connection fails for this reason.
            total = len(range(k, cfg.publishers, procs)) + len(range(k, cfg.connections, procs))
            self.counters.failed += total
            self.failures[f"cannot resolve: {error}"] = total
            return
        tls = tls_context(cfg.insecure) if sub_uri.secure or pub_uri.secure else None
        plan: list[tuple[Connection, tuple[str, int]]] = []
        tokens = cfg.tokens
        # The same connection over Socket.IO's wire protocol when the URL is a Socket.IO one.
        pub_kind = SocketIOConnection if is_socketio(cfg.publish_url) else Connection
        sub_kind = SocketIOConnection if is_socketio(cfg.url) else Connection
        for j in range(k, cfg.publishers, procs):
            token = tokens[(cfg.connections + j) % len(tokens)] if tokens else None
            conn = pub_kind(self, Role.PUBLISHER, pub_uri, token, None)
            self.publishers.append(conn)
            plan.append((conn, pub_addr))
        for i in range(k, cfg.connections, procs):
            token = tokens[i % len(tokens)] if tokens else None
            conn = sub_kind(self, Role.SUBSCRIBER, sub_uri, token, cfg.rooms[i % len(cfg.rooms)])
            self.subscribers.append(conn)
            plan.append((conn, sub_addr))
        self.settled = loop.create_future()
        self.pending = len(plan)
        if not plan:
            return
        interval = procs / cfg.connect_rate
        if cfg.max_pending:
            self.slots = asyncio.Semaphore(max(1, cfg.max_pending // procs))
        started = loop.time()
        tasks = set()
        for n, (conn, addr) in enumerate(plan):
            delay = started + n * interval - loop.time()
            if delay > 0.002:  # sleeping for less is all overhead
                await asyncio.sleep(delay)
            if self.slots is not None:
                await self.slots.acquire()
            if self.stopped:
                break
            task = loop.create_task(self._open(conn, addr, conn.uri, tls))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if self.stopped:
            for conn, _ in plan:
                if conn.phase is Phase.CONNECTING:
                    conn.abort("stopped")
        await self.settled
        # Everything built so far lives to the end: keep the collector from rescanning it.
        gc.freeze()

    async def _open(
        self,
        conn: Connection,
        addr: tuple[str, int],
        uri: WebSocketURI,
        tls: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        conn.started_ns = monotonic_ns()
        conn.timer = loop.call_later(self.config.connect_timeout, conn.abort, "timeout")
        try:
            await loop.create_connection(
                lambda: conn,
                addr[0],
                addr[1],
                ssl=tls,
                server_hostname=uri.host if tls else None,
            )
        except OSError as error:
            if conn.phase is Phase.CONNECTING:
                conn.phase = Phase.CLOSED
                self.on_failed(conn, type(error).__name__)

    async def _publish(self, start_ns: int, end_ns: int) -> None:
        cfg = self.config
        await self._sleep_until(start_ns)
        pubs = [c for c in self.publishers if c.ready]
        rate = cfg.rate * len(self.publishers) / cfg.publishers if cfg.publishers else 0.0
        if rate <= 0 or not pubs:
            await self._sleep_until(end_ns)
            return
        rooms, k, procs = cfg.rooms, self.index, cfg.procs
        pad = "x" * max(0, cfg.body_size - 24)
        n = 0
        while not self.stopped:
            now = monotonic_ns()
            if now >= end_ns:
                break
            due = int((now - start_ns) * rate / 1e9) + 1
            while n < due:
                pub = pubs[n % len(pubs)]
                if pub.phase is not Phase.OPEN:
                    pubs.remove(pub)
                    if not pubs:
                        return
                    continue
                cmid = f"{self.run_id}-{k}-{n}"
                sent = monotonic_ns()
                pub.send(
                    {
                        "type": "publish",
                        "ref": cmid,
                        "room": rooms[(k + procs * n) % len(rooms)],
                        "body": f"t={sent} {pad}",
                        "client_msg_id": cmid,
                    }
                )
                self.outstanding[cmid] = sent
                self.counters.sent += 1
                n += 1
            next_due = start_ns + int(n * 1e9 / rate)
            await asyncio.sleep(max(PUBLISH_TICK_SECONDS, (next_due - monotonic_ns()) / 1e9))

    async def _await_acks(self, deadline_ns: int) -> None:
        if not self.outstanding or self.stopped:
            return
        self.acks_in = asyncio.Event()
        # What is still outstanding at the deadline is reported as never acknowledged.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.acks_in.wait(), (deadline_ns - monotonic_ns()) / 1e9)

    async def _drain(self, last_acked: dict[str, int], deadline_ns: int) -> None:
        """Wait until every open subscription has every acknowledged seq, or the deadline."""
        behind = self.subscribers
        while not self.stopped and monotonic_ns() < deadline_ns:
            behind = [
                c
                for c in behind
                if c.phase is Phase.OPEN
                and c.check is not None
                and (c.check.holes or c.check.top < last_acked.get(c.room or "", 0))
            ]
            if not behind:
                return
            await asyncio.sleep(DRAIN_POLL_SECONDS)

    # Callbacks from connections

    def on_open(self, conn: Connection) -> None:
        if conn.role is Role.SUBSCRIBER:
            conn.send({"type": "subscribe", "ref": "s", "room": conn.room})
        else:
            self._ready(conn)

    def on_subscribed(self, conn: Connection) -> None:
        if not conn.ready:
            self._ready(conn)

    def _ready(self, conn: Connection) -> None:
        conn.ready = True
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self.connect_us.append((monotonic_ns() - conn.started_ns) // 1000)
        self.counters.connections += 1
        self._settle_one()

    def on_failed(self, conn: Connection, reason: str) -> None:
        self.counters.failed += 1
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self._settle_one()

    def _settle_one(self) -> None:
        if self.slots is not None:
            self.slots.release()
        self.pending -= 1
        if self.pending <= 0 and self.settled is not None and not self.settled.done():
            self.settled.set_result(None)

    def on_dropped(self, conn: Connection, reason: str) -> None:
        if not self.closing:
            self.counters.connections -= 1
            self.counters.dropped += 1
            why = f"dropped {conn.role.value}: {reason}"
            self.failures[why] = self.failures.get(why, 0) + 1

    def on_ack(self, msg: dict[str, Any]) -> None:
        sent = self.outstanding.pop(msg.get("client_msg_id", ""), None)
        if sent is None:
            return  # a retry's second ack, or not ours
        if not self.outstanding and self.acks_in is not None:
            self.acks_in.set()
        self.counters.acked += 1
        self.ack_us.append((monotonic_ns() - sent) // 1000)
        room, seq = msg.get("room"), msg.get("seq")
        if isinstance(room, str) and isinstance(seq, int) and seq > self.last_acked.get(room, 0):
            self.last_acked[room] = seq

    def on_error_frame(self, conn: Connection, msg: dict[str, Any]) -> None:
        code = str(msg.get("code", "?"))
        if conn.role is Role.SUBSCRIBER and not conn.ready:
            conn.abort(f"subscribe: {code}")
            return
        self.outstanding.pop(msg.get("ref", ""), None)
        if not self.outstanding and self.acks_in is not None:
            self.acks_in.set()
        self.counters.error(code)

    def on_resync(self, conn: Connection) -> None:
        """The server dropped the subscription: resubscribe from the last contiguous seq."""
        self.correctness.resyncs += 1
        check = conn.check
        if check is not None:
            since = min(check.holes) - 1 if check.holes else check.top
            conn.send({"type": "subscribe", "ref": "r", "room": conn.room, "since": since})

    def on_protocol_error(self, conn: Connection, what: str) -> None:
        self.counters.error(what)

    # Talking to the parent

    def _on_stop(self) -> None:
        """The coordinator said stop (or is gone): wake every phase that waits."""
        self.stopped = True
        if self.acks_in is not None:
            self.acks_in.set()
        if self.settled is not None and not self.settled.done():
            self.settled.set_result(None)
        if self.slots is not None:
            self.slots.release()  # wake a connect loop waiting for a slot

    async def _sleep_until(self, when_ns: int) -> None:
        while not self.stopped:
            left = (when_ns - monotonic_ns()) / 1e9
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            recv, lat = self._take_samples()
            self.link.send(("tick", self.counters, recv, lat))

    def _take_samples(self) -> tuple[bytes, bytes]:
        recv, lat = self.recv_ms.tobytes(), self.latency_us.tobytes()
        self.recv_ms, self.latency_us = array("i"), array("i")
        return recv, lat

    def _result(self) -> WorkerResult:
        recv, lat = self._take_samples()
        return WorkerResult(
            counters=self.counters,
            correctness=self.correctness,
            recv_ms=recv,
            latency_us=lat,
            ack_us=self.ack_us.tobytes(),
            connect_us=self.connect_us.tobytes(),
            failures=self.failures,
        )


def worker_main(config: Config, index: int, commands: Pipe, reports: Pipe, t0_ns: int) -> None:
    """The entry point of a worker process."""
    # The parent handles Ctrl-C and tells the workers to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Fewer, larger collections: the run allocates millions of short-lived frames.
    gc.set_threshold(50_000, 20, 100)
    os.set_blocking(reports.fileno(), True)
    worker = Worker(config, index, commands, reports, t0_ns)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # optional: uvicorn[standard] brings it, not every platform has it
        runner = asyncio.Runner()
    with runner:
        runner.run(worker.run())
    reports.close()
    os._exit(0)  # skip interpreter teardown of tens of thousands of objects
