"""A small /ws/ test client that records every frame, and the checker for the resume guarantee.

The client reads in a background task, so frames are recorded in arrival order
while the test sends, and tests wait for the frame they need instead of
sleeping. `check_gap_free` is the one assertion for "every message exactly once
and in seq order"; fault tests reuse it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from tests.e2e.servers import Pod

Frame = dict[str, Any]
WAIT = 10.0


class ServerError(AssertionError):
    """The server answered a command with an error frame."""

    def __init__(self, frame: Frame) -> None:
        super().__init__(f"server answered with an error: {frame}")
        self.frame = frame


class WsClient:
    """One /ws/ connection; `frames` holds every frame received, in order."""

    _refs = itertools.count(1)

    def __init__(self, conn: ClientConnection, name: str = "") -> None:
        self.conn = conn
        self.name = name
        self.frames: list[Frame] = []
        # Presence frames (who is online) come on every subscribe and whenever someone joins
        # or leaves: kept apart, so tests of something else see the frames they are about.
        self.presence: list[Frame] = []
        self.arrived: list[float] = []  # time.monotonic() of each frame's arrival
        self.by_ref: dict[str, Frame] = {}
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(), name=f"ws reader {name}")

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        cookie: str | None = None,
        origin: str | None = None,
        headers: Mapping[str, str] | None = None,
        name: str = "",
        within: float = WAIT,
    ) -> WsClient:
        """Open a connection; raises websockets' InvalidStatus if the handshake is refused."""
        extra = dict(headers or {})
        if token is not None:
            extra["Authorization"] = f"Bearer {token}"
        if cookie is not None:
            extra["Cookie"] = cookie
        conn = await connect(
            url,
            origin=Origin(origin) if origin is not None else None,
            additional_headers=extra,
            compression=None,  # the pods run with per-message deflate off
            proxy=None,  # loopback only, whatever the environment says
            open_timeout=within,
            max_size=2**22,
        )
        return cls(conn, name)

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                frame = json.loads(raw)
                async with self._arrived:
                    if frame.get("type") == "presence":
                        self.presence.append(frame)
                        self._arrived.notify_all()
                        continue
                    self.frames.append(frame)
                    self.arrived.append(time.monotonic())
                    ref = frame.get("ref")
                    if isinstance(ref, str):
                        self.by_ref.setdefault(ref, frame)
                    self._arrived.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.conn.close_code
            self.closed.set()
            async with self._arrived:
                self._arrived.notify_all()

    async def close(self) -> None:
        await self.conn.close()
        await asyncio.wait_for(asyncio.shield(self._reader), WAIT)

    # Sending.

    @classmethod
    def new_ref(cls) -> str:
        return f"r{next(cls._refs)}"

    async def send(self, frame: Frame) -> None:
        await self.conn.send(json.dumps(frame))

    async def send_raw(self, text: str) -> None:
        await self.conn.send(text)

    # Waiting for frames.

    async def wait_for(
        self, match: Callable[[Frame], bool], *, start: int = 0, within: float = WAIT
    ) -> Frame:
        """The first frame at or after index `start` that matches, waiting for it if needed."""
        scanned = start
        found: list[Frame] = []

        def ready() -> bool:
            nonlocal scanned
            while scanned < len(self.frames):
                frame = self.frames[scanned]
                scanned += 1
                if match(frame):
                    found.append(frame)
                    return True
            return self.closed.is_set()

        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(ready)
        if not found:
            raise AssertionError(
                f"{self.name}: connection closed ({self.close_code}) before the frame came; "
                f"last frames: {self.frames[-5:]}"
            )
        return found[0]

    async def wait_for_presence(
        self, match: Callable[[Frame], bool], *, within: float = WAIT
    ) -> Frame:
        """The first presence frame that matches, waiting for it if needed."""
        found: list[Frame] = []

        def ready() -> bool:
            found[:] = [f for f in self.presence if match(f)][:1]
            return bool(found) or self.closed.is_set()

        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(ready)
        if not found:
            raise AssertionError(f"{self.name}: closed before the presence frame came")
        return found[0]

    async def reply(self, ref: str, *, within: float = WAIT) -> Frame:
        """The frame answering the command sent with `ref`."""
        if ref in self.by_ref:
            return self.by_ref[ref]
        return await self.wait_for(lambda f: f.get("ref") == ref, within=within)

    async def request(self, frame: Frame, *, within: float = WAIT) -> Frame:
        """Send a command (with a fresh ref unless it has one) and return the answer to it."""
        frame = {"ref": self.new_ref(), **frame}
        await self.send(frame)
        return await self.reply(frame["ref"], within=within)

    async def wait_closed(self, within: float = WAIT) -> int | None:
        async with asyncio.timeout(within):
            await self.closed.wait()
        return self.close_code

    # Commands.

    async def ping(self, within: float = WAIT) -> None:
        """Ping and expect pong: the connection is open and still answering."""
        answer = await self.request({"type": "ping"}, within=within)
        assert answer["type"] == "pong", answer

    async def subscribe(
        self, room: str, since: int | None = None, *, within: float = WAIT
    ) -> Frame:
        """Subscribe and return the `subscribed` frame (after any backfill)."""
        frame: Frame = {"type": "subscribe", "room": room}
        if since is not None:
            frame["since"] = since
        answer = await self.request(frame, within=within)
        if answer["type"] != "subscribed":
            raise ServerError(answer)
        return answer

    async def publish(
        self, room: str, body: str, client_msg_id: str | None = None, *, within: float = WAIT
    ) -> Frame:
        """Publish and return the `ack` frame."""
        answer = await self.request(publish_frame(room, body, client_msg_id), within=within)
        if answer["type"] != "ack":
            raise ServerError(answer)
        return answer

    async def publish_many(
        self, room: str, bodies: Iterable[str], *, within: float = WAIT
    ) -> list[Frame]:
        """Pipeline publishes without waiting for each ack, then return the acks in order."""
        refs = []
        for body in bodies:
            frame = {"ref": self.new_ref(), **publish_frame(room, body)}
            refs.append(frame["ref"])
            await self.send(frame)
        acks = []
        async with asyncio.timeout(within):
            for ref in refs:
                answer = await self.reply(ref, within=within)
                if answer["type"] != "ack":
                    raise ServerError(answer)
                acks.append(answer)
        return acks

    # Reading what arrived.

    def messages(self, room: str) -> list[Frame]:
        return [f for f in self.frames if f["type"] == "message" and f["room"] == room]

    def seqs(self, room: str) -> list[int]:
        return [f["seq"] for f in self.messages(room)]

    async def wait_for_seq(self, room: str, seq: int, *, within: float = WAIT) -> Frame:
        """Wait until the message with this seq in this room has arrived."""
        return await self.wait_for(
            lambda f: f["type"] == "message" and f["room"] == room and f["seq"] == seq,
            within=within,
        )


class Sockets:
    """Opens clients as named users for one test and closes them all when it ends."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self.tokens = tokens
        self.clients: list[WsClient] = []

    async def open(self, pod: Pod, user: str = "alice", *, name: str = "") -> WsClient:
        """A token-authenticated client of `user` on `pod`."""
        client = await WsClient.connect(
            pod.ws_url, token=self.tokens[user], name=name or f"{user}@{pod.name}"
        )
        self.clients.append(client)
        return client

    async def close_all(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))


def publish_frame(room: str, body: str, client_msg_id: str | None = None) -> Frame:
    return {
        "type": "publish",
        "room": room,
        "body": body,
        "client_msg_id": client_msg_id or uuid.uuid4().hex,
    }


def types(frames: list[Frame]) -> list[str]:
    return [f["type"] for f in frames]


def check_gap_free(
    seqs: Sequence[int], first: int, last: int, *, allow_repeats: bool = False
) -> None:
    """Assert that `seqs` is exactly first..last, each once and in order (the resume guarantee).

    With allow_repeats, a seq seen before is dropped first, as the protocol tells
    clients to do after a resubscribe; loss and disorder still fail.
    """
    if allow_repeats:
        seen: set[int] = set()
        firsts = []
        for seq in seqs:
            if seq not in seen:
                seen.add(seq)
                firsts.append(seq)
        seqs = firsts
    expected = list(range(first, last + 1))
    if list(seqs) == expected:
        return
    counts = Counter(seqs)
    missing = sorted(set(expected) - counts.keys())
    duplicated = sorted(s for s, n in counts.items() if n > 1)
    unexpected = sorted(s for s in counts if not first <= s <= last)
    disorder = [(a, b) for a, b in itertools.pairwise(seqs) if b <= a]
    raise AssertionError(
        f"expected seqs {first}..{last} exactly once in order; got {len(seqs)} frames: "
        f"missing {_short(missing)}, duplicated {_short(duplicated)}, "
        f"unexpected {_short(unexpected)}, out of order after {_short(disorder)}"
    )


def check_room_delivery(
    frames: Sequence[Frame], room: str, first: int, last: int, *, allow_repeats: bool = False
) -> None:
    """check_gap_free over the `message` frames of one room among all the frames a client got."""
    seqs = [f["seq"] for f in frames if f.get("type") == "message" and f.get("room") == room]
    check_gap_free(seqs, first, last, allow_repeats=allow_repeats)


def _short(items: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"
