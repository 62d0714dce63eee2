"""A worker's end of its two pipes to the coordinator, and the messages they carry.

The coordinator (loadtest.coordinator) keeps the workers in step with these, in this order:

    worker -> parent   ("tick", counters, recv_ms, latency_us)   every second
    worker -> parent   ("ready",)                                 all its connections settled
    parent -> worker   ("start", publish_start_ns, publish_end_ns)
    worker -> parent   ("acked", {room: last acked seq})          publishing over, acks in
    parent -> worker   ("final", {room: last acked seq}, drain_deadline_ns)
    worker -> parent   ("result", WorkerResult)
    parent -> worker   ("stop",)                                  at any time: wrap up now
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from typing import Any


class ParentLink:
    """Sends reports to the coordinator and hands its commands to whoever awaits them."""

    def __init__(self, commands: Pipe, reports: Pipe, on_stop: Callable[[], None]) -> None:
        # Two one-way pipes: the event loop makes the command end non-blocking, while
        # reports (a second's samples can be a megabyte) are written blocking.
        self.commands = commands
        self.reports = reports
        self.on_stop = on_stop
        self.stopped = False
        self.awaited: dict[str, asyncio.Future[tuple[Any, ...] | None]] = {}

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.commands.fileno(), self._on_command)

    def stop_listening(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.commands.fileno())

    def send(self, message: tuple[Any, ...]) -> None:
        self.reports.send(message)

    async def command(self, name: str) -> tuple[Any, ...] | None:
        """The next command called `name`, or None once the coordinator said stop."""
        if self.stopped:
            return None
        return await self._future(name)

    def _on_command(self) -> None:
        try:
            message = self.commands.recv()
        except EOFError:
            message = ("stop",)  # the parent is gone
        if message[0] == "stop":
            self.stopped = True
            for future in self.awaited.values():
                if not future.done():
                    future.set_result(None)
            self.on_stop()
            return
        future = self._future(message[0])
        if not future.done():
            future.set_result(message)

    def _future(self, name: str) -> asyncio.Future[tuple[Any, ...] | None]:
        if name not in self.awaited:
            self.awaited[name] = asyncio.get_running_loop().create_future()
        return self.awaited[name]
