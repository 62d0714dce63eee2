"""Background tasks are kept until they finish, and their failures are logged."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import pytest

from realtime import publisher, tasks
from web import actions
from web.access import aget_room_for_user
from web.models import Room


async def test_a_spawned_task_is_kept_while_nothing_else_holds_it() -> None:
    done: list[str] = []

    async def work(gate: asyncio.Future[None]) -> None:
        await gate
        done.append("finished")

    # Nothing but the task itself holds the future it waits on.
    ref = weakref.ref(tasks.spawn(work(asyncio.get_running_loop().create_future()), name="w"))
    gc.collect()
    task = ref()
    assert task is not None, "collected while pending"
    assert task in tasks.running()
    task.cancel()
    await asyncio.wait([task])
    await asyncio.sleep(0)  # its done callbacks run on the next turn
    assert task not in tasks.running()


async def test_a_failing_task_is_logged_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    async def explode() -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="realtime.tasks"):
        task = tasks.spawn(explode(), name="exploding")
        await asyncio.wait([task])
        await asyncio.sleep(0)
    assert "background task exploding failed" in caplog.text
    assert "ValueError: boom" in caplog.text
    assert task not in tasks.running()


@pytest.mark.django_db(transaction=True)
async def test_a_batch_in_flight_is_a_kept_task(alice: Any) -> None:
    await Room.objects.acreate(slug="lobby", title="Lobby")
    room = await aget_room_for_user(alice, "lobby")
    sent = asyncio.ensure_future(publisher.publish(actions.Outgoing(alice, room, "hi", "a")))
    await asyncio.sleep(0)  # the lane starts later in this turn of the loop
    await asyncio.sleep(0)
    assert "publish lane" in {t.get_name() for t in tasks.running()}
    assert (await sent).message.seq == 1
