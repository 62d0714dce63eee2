"""Who is online in which room: this process's sockets, shared through Redis with expiries.

Online in a room = has a socket subscribed to it. Each process counts its own sockets per
(room, user) (`Presence`, an attribute of realtime/process.py's Process) and holds one
member "<process>|<username>" per (room, user) in the room's sorted set in Redis, scored
with the time it expires, beside a hash username -> processes holding the user. Only the
Lua scripts below change them, atomically, so of two processes sweeping the same expired
member only one reports the leave, and a user with sockets on two pods leaves when the
last one closes. Every PRESENCE_HEARTBEAT_SECONDS each process re-scores its members
(which also re-adds them after a Redis restart) and sweeps the expired ones of its rooms:
the users of a process killed without a goodbye leave PRESENCE_TTL_SECONDS after its last
heartbeat, plus one heartbeat and one flush at most.

Changes are not sent one by one: each process collects the users whose state changed, per
room, and every PRESENCE_FLUSH_SECONDS sends one `presence` frame per room with the state
those users are in *now* (docs/architecture.md says why not a cancelling diff). A room of
N members all joining costs about N frames per flush instead of N * N.

Without REDIS_URL the same scripts' effects are kept in memory (`MemoryStore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings

from project import redis_config
from realtime import redis_clients
from realtime.presence_store import MemoryStore, RedisStore, Store
from web import activity
from web.actions.presence import PresenceChange, do_presence_changes

logger = logging.getLogger(__name__)

T = TypeVar("T")

FAILURES = (*redis_config.ERRORS, OSError)  # OSError includes TimeoutError and ConnectionError
send_changes = sync_to_async(do_presence_changes, thread_sensitive=False)
_origins = itertools.count()
PROCESS_ID = uuid.uuid4().hex[:12]  # names this process's members in Redis


def new_origin() -> str:
    """An id for a socket, unique across processes (the `unread` frame skips its asker)."""
    return f"{PROCESS_ID}:{next(_origins)}"


class Presence:
    """This process's sockets per room and user, their heartbeats, and the batched diffs."""

    def __init__(self, process_id: str = PROCESS_ID, *, background: bool = True) -> None:
        self.process_id = process_id
        self.background = background  # False: the owner calls tick() (tests, benchmarks)
        self.store: Store | None = None  # made on first use, on the loop that uses it
        # Without REDIS_URL; its last-seen times are those web/activity.py reads.
        self.memory = MemoryStore(activity.LOCAL)
        self.sockets: dict[int, dict[str, set[int]]] = {}  # room id -> username -> sockets
        self.slugs: dict[int, str] = {}
        self.leaving: set[tuple[int, str]] = set()  # (room, user) with no socket here now
        self.touched: dict[int, set[str]] = {}  # room id -> users whose state may have changed
        self.users: dict[object, int] = {}  # user id -> sockets here (for last_seen)
        self.gone: set[object] = set()  # users whose last socket here closed, not yet written
        self.fresh: set[object] = set()  # users who connected since the last tick
        self.loop_task: asyncio.Task[None] | None = None
        self.next_beat = 0.0
        self.warned_at = -60.0

    # Sockets.

    async def enter(self, socket: object, room_id: int, slug: str, username: str) -> list[str]:
        """A socket of `username` follows the room: count it; the room's online users."""
        self._start()
        self.slugs[room_id] = slug
        users = self.sockets.setdefault(room_id, {})
        new_here = username not in users
        users.setdefault(username, set()).add(id(socket))
        self.leaving.discard((room_id, username))  # back before its leave was written
        member = [self._member(username)] if new_here else []
        try:
            joined, left, online = await self._call(
                lambda store: store.join(room_id, member, online=True)
            )
        except FAILURES as error:
            # The heartbeat adds it and reports the change; the client sees this process's.
            self._warn("cannot join a room's presence", error)
            return sorted({*users, username})
        self._touch(room_id, joined, left)
        return sorted(online)

    def exit(self, socket: object, room_id: int, username: str) -> None:
        """A socket stops following the room. Sync (it runs in a finally): Redis is told by
        the flush loop."""
        users = self.sockets.get(room_id)
        if users is None or id(socket) not in users.get(username, ()):
            return
        users[username].discard(id(socket))
        if not users[username]:
            del users[username]
            self.leaving.add((room_id, username))
        if not users:
            del self.sockets[room_id]

    def connected(self, user_id: object) -> None:
        """A socket of the user opened in this process (last_seen: the user is here)."""
        self._start()
        self.users[user_id] = self.users.get(user_id, 0) + 1
        self.gone.discard(user_id)
        self.fresh.add(user_id)

    def disconnected(self, user_id: object) -> None:
        count = self.users.get(user_id, 0) - 1
        if count > 0:
            self.users[user_id] = count
            return
        self.users.pop(user_id, None)
        self.gone.add(user_id)

    async def online(self, room_id: int) -> list[str]:
        """The room's online users, read without changing anything (the REST view)."""
        return sorted(await self._call(lambda store: store.online(room_id)))

    # The background loop: leaves, heartbeats, flushes.

    def _start(self) -> None:
        if self.background and (self.loop_task is None or self.loop_task.done()):
            from realtime.tasks import spawn  # realtime.tasks imports the process, which has us

            self.loop_task = spawn(self._run_forever(), name="presence")

    async def _run_forever(self) -> None:
        while True:
            await asyncio.sleep(settings.PRESENCE_FLUSH_SECONDS)
            try:
                await self.tick()
            except FAILURES as error:
                self._warn("presence could not reach Redis", error)
            except Exception:
                logger.exception("presence tick failed")

    async def tick(self, *, beat: bool | None = None) -> None:
        """Write the leaves, beat when due, and send what changed (one frame per room)."""
        await self._write_leaves()
        now = time.monotonic()
        if beat or (beat is None and now >= self.next_beat):
            self.next_beat = now + settings.PRESENCE_HEARTBEAT_SECONDS
            await self._beat()
        await self.flush()

    async def _write_leaves(self) -> None:
        # Only those still without a socket here: one may have come back since.
        leaves = [(r, u) for r, u in self.leaving if u not in self.sockets.get(r, {})]
        self.leaving.clear()
        gone, self.gone = self.gone, set()
        fresh, self.fresh = [u for u in self.fresh if u in self.users], set()
        if not leaves and not gone and not fresh:
            return
        members = [(room_id, self._member(user)) for room_id, user in leaves]
        try:
            left = await self._call(lambda store: store.leave(members))
            await self._call(lambda store: store.seen_leave(self.process_id, list(gone)))
            await self._call(lambda store: store.seen(self.process_id, fresh))
        except BaseException:
            self.leaving.update(leaves)  # tried again at the next tick
            self.gone.update(gone - set(self.users))
            self.fresh.update(fresh)
            raise
        for room_id, users in left.items():
            self._touch(room_id, [], users)

    async def _beat(self) -> None:
        entries = {
            room_id: [self._member(user) for user in users]
            for room_id, users in self.sockets.items()
        }
        changes = await self._call(lambda store: store.beat(entries))
        for room_id, (joined, left) in changes.items():
            self._touch(room_id, joined, left)
        if self.users:
            await self._call(lambda store: store.seen(self.process_id, list(self.users)))

    async def flush(self) -> None:
        """Send one `presence` frame per room whose users changed, with their state now."""
        if not self.touched:
            return
        touched, self.touched = self.touched, {}
        try:
            states = await self._call(lambda store: store.states(touched))
        except BaseException:
            for room_id, users in touched.items():
                self.touched.setdefault(room_id, set()).update(users)
            raise
        changes: list[PresenceChange] = []
        for room_id, users in touched.items():
            online = states.get(room_id, set())
            slug = self.slugs.get(room_id)
            if slug is None:
                continue
            joined = sorted(u for u in users if u in online)
            left = sorted(u for u in users if u not in online)
            changes.append(PresenceChange(room_id, slug, joined, left))
        for room_id in [r for r in self.slugs if r not in self.sockets]:
            del self.slugs[room_id]  # no socket here follows it any more
        if changes:
            await send_changes(changes)

    async def aclose(self) -> None:
        """Say goodbye: this process's members leave Redis now rather than at their expiry."""
        for room_id, users in list(self.sockets.items()):
            self.leaving.update((room_id, user) for user in users)
        self.sockets.clear()
        self.gone.update(self.users)
        self.users.clear()
        with contextlib.suppress(*FAILURES, asyncio.CancelledError):
            async with asyncio.timeout(settings.REDIS_PUBLISH_TIMEOUT_SECONDS):
                await self._write_leaves()
                await self.flush()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.aclose()

    # Helpers.

    def _touch(self, room_id: int, joined: list[str], left: list[str]) -> None:
        if joined or left:
            self.touched.setdefault(room_id, set()).update(joined, left)

    def _member(self, username: str) -> str:
        return f"{self.process_id}|{username}"

    async def _call(self, call: Callable[[Store], Awaitable[T]]) -> T:
        """One store call, bounded by the publish timeout of realtime/redis_clients.py."""
        if self.store is None:
            url = settings.REDIS_URL
            self.store = RedisStore(redis_clients.async_publisher(url)) if url else self.memory
        async with asyncio.timeout(settings.REDIS_PUBLISH_TIMEOUT_SECONDS):
            return await call(self.store)

    def _warn(self, what: str, error: BaseException) -> None:
        now = time.monotonic()
        if now - self.warned_at >= 60:  # one line a minute while Redis is away, not per frame
            self.warned_at = now
            logger.warning("%s (%s); it catches up at the next heartbeat", what, type(error))


def get_presence() -> Presence:
    from realtime.process import get_process

    presence: Presence = get_process().presence
    return presence


def presence_frame(slug: str, online: list[str]) -> dict[str, Any]:
    return {"type": "presence", "room": slug, "online": online}


def unread_frame(
    room: str, count: int, last_read_seq: int, ref: str | None = None
) -> dict[str, Any]:
    """The read state of a room for the user's sockets (the asker's carries its ref)."""
    frame: dict[str, Any] = {
        "type": "unread",
        "room": room,
        "count": count,
        "last_read_seq": last_read_seq,
    }
    if ref is not None:
        frame["ref"] = ref
    return frame
