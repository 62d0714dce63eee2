"""A socket's publishes: queued in the order sent, each answered once it is stored.

The consumer (realtime/consumers.py mixes this in) reads a socket's frames one at a
time; a publish is queued with this process's publisher (realtime/publisher.py) while
its frame is handled, and answered by a task of its own when stored. The socket's next
frames are read meanwhile, so one client's publishes share the publisher's batches
instead of each waiting for the previous one's commit: with PostgreSQL's fsync, a
socket that waited for every ack could publish only as fast as commits come back.
Order is kept where it matters: a room's queue is in arrival order, so a socket's
messages to a room get seqs in the order sent (and acks in that order too).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from realtime import protocol, publisher
from realtime.deadlines import db
from realtime.protocol import Command, Publish
from web.actions import Outgoing, SentMessage
from web.errors import RateLimited

if TYPE_CHECKING:
    from realtime.limits import ConnectionLimits
    from web.models import Room

logger = logging.getLogger(__name__)


class Publishes:
    """ChatConsumer's publish handler and the tasks answering its publishes."""

    # This socket's publishes being stored (their answering tasks); the consumer reads no
    # more of the socket while SOCKET_PUBLISHES_IN_FLIGHT are, and its drain waits for them.
    acks: set[asyncio.Task[None]] | None = None

    if TYPE_CHECKING:  # set and defined by ChatConsumer
        user: Any
        busy: bool
        restart_due: bool
        limits: ConnectionLimits

        async def send(
            self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
        ) -> None: ...
        async def _room(self, slug: str) -> Room: ...
        async def _refuse(
            self, error: Exception, command: Command | None, ref: str | None
        ) -> None: ...
        def restart(self) -> None: ...

    async def publish(self, command: Publish) -> None:
        if not await self.limits.allow_publish():
            raise RateLimited("too many messages; slow down")
        room = await self._room(command.room)
        member = bool(getattr(room, "is_member", False))
        # Queued now, so this socket's publishes to a room are stored in the order sent;
        # answered when stored, by a task of its own (see `acks`).
        stored = publisher.enqueue(
            Outgoing(self.user, room, command.body, command.client_msg_id, member)
        )
        if self.acks is None:
            self.acks = set()
        task = asyncio.get_running_loop().create_task(self._ack(command, room, stored))
        self.acks.add(task)
        task.add_done_callback(self._acked)

    async def _ack(self, command: Publish, room: Room, stored: asyncio.Future[SentMessage]) -> None:
        try:
            sent = await db(stored)
        except Exception as error:  # _refuse re-raises what is not a refusal
            await self._refuse(error, command, command.ref)
            return
        # Posting joined it: later publishes skip the membership insert. Set here, on the
        # event loop that owns `room`, not on the storing thread.
        room.is_member = True  # type: ignore[attr-defined]  # aget_room_for_user's annotation
        ack = {
            "type": "ack",
            "ref": command.ref,
            "room": room.slug,
            "seq": sent.message.seq,
            "client_msg_id": sent.message.client_msg_id,
        }
        await self.send(protocol.dumps(ack))

    def _acked(self, task: asyncio.Task[None]) -> None:
        if self.acks is not None:
            self.acks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, OSError):  # the client left: it resends unacked ones
                logger.error("answering a publish failed", exc_info=error)
        if self.restart_due and not self.busy:
            self.restart()
