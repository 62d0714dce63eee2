"""A socket's publishes: queued in the order sent, each answered once it is stored.

The consumer (realtime/consumers.py mixes this in) reads a socket's frames one at a
time; a publish is queued with this process's publisher (realtime/publisher.py) while
its frame is handled, and answered from the stored future's callback: the ack written
through the socket's writer (realtime/wire.py) like a fan-out frame, no task nor ASGI
send per publish (only a refusal, rare, takes a task: its answer is async). The next
frames are read meanwhile, so one client's publishes share the publisher's batches
instead of each waiting for the previous one's commit: with PostgreSQL's fsync, a
socket that waited for every ack could publish only as fast as commits come back.
Order is kept where it matters: a room's queue is in arrival order, so a socket's
messages to a room get seqs in the order sent (and acks in that order too).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from project import metrics
from realtime import protocol, publisher
from realtime.deadlines import deadline
from realtime.protocol import Command, Publish
from realtime.tasks import spawn
from realtime.wire import Writer, text_frame
from web.actions import Outgoing, SentMessage
from web.errors import RateLimited

if TYPE_CHECKING:
    from realtime.limits import ConnectionLimits
    from web.models import Room


class Publishes:
    """ChatConsumer's publish handler, and the answers to its publishes."""

    # This socket's publishes being stored; the consumer reads no more of the socket while
    # SOCKET_PUBLISHES_IN_FLIGHT are, and its drain waits for them.
    acks: set[asyncio.Future[SentMessage]] | None = None

    if TYPE_CHECKING:  # set and defined by ChatConsumer
        user: Any
        busy: bool
        restart_due: bool
        limits: ConnectionLimits
        writer: Writer

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
        # Queued now, so this socket's publishes to a room are stored in the order sent.
        stored = publisher.enqueue(
            Outgoing(self.user, room, command.body, command.client_msg_id, member)
        )
        if self.acks is None:
            self.acks = set()
        self.acks.add(stored)
        # Past the database deadline the client is told to publish again, and the publish
        # is not stored if no batch has taken it yet (the publisher skips done futures).
        timer = deadline(stored)
        stored.add_done_callback(lambda done: self._answer(command, room, done, timer))

    def _answer(
        self,
        command: Publish,
        room: Room,
        stored: asyncio.Future[SentMessage],
        timer: asyncio.TimerHandle,
    ) -> None:
        timer.cancel()
        if self.acks is not None:  # always set by publish(); the check is for the type
            self.acks.discard(stored)
        if stored.cancelled():
            pass  # the process is stopping (realtime.tasks.answer_each): the client resends
        elif (error := stored.exception()) is not None:
            spawn(self._refused(error, command), name="publish refused")
        else:
            sent = stored.result()
            # Posting joined it: later publishes skip the membership insert. Set here, on
            # the event loop that owns `room`, not on the storing thread.
            room.is_member = True  # type: ignore[attr-defined]  # aget_room_for_user's annotation
            text = protocol.dumps(
                {
                    "type": "ack",
                    "ref": command.ref,
                    "room": room.slug,
                    "seq": sent.message.seq,
                    "client_msg_id": sent.message.client_msg_id,
                }
            )
            # Behind the fan-out frames queued for this socket, in this turn's one write. A
            # socket too far behind to take it is being closed as too slow: the client
            # publishes again with the same client_msg_id and gets the same ack.
            self.writer.write(text_frame(text), text)
            metrics.WS_FRAMES_SENT.inc()
        if self.restart_due and not self.busy:
            self.restart()

    async def _refused(self, error: BaseException, command: Publish) -> None:
        if not isinstance(error, Exception):
            raise error
        with contextlib.suppress(OSError):  # the client left: it resends what was not acked
            await self._refuse(error, command, command.ref)
