"""Open sockets' credentials, checked again now and then: the bound for changes Django never saw.

Deactivating a user, changing a password or revoking a token through Django (an
action, the admin, `user.save()` in a shell) reaches the user's sockets at once
(web/receivers.py, web/actions.py). A change behind Django's back, such as a raw
SQL UPDATE, sends nothing; so every AUTH_RECHECK_SECONDS each process reads the
users and tokens of its open sockets (one query each per thousand) and sends
`user.changed` to the sockets whose user is gone or inactive, whose password
changed since they connected, or whose token was revoked. They check themselves
then as on any `user.changed` (ChatConsumer.user_changed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, cast

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from realtime.deadlines import db
from realtime.process import get_process
from realtime.tasks import spawn
from web.access import astale_credentials

logger = logging.getLogger(__name__)

USER_CHANGED: dict[str, Any] = {"type": "user.changed"}


class Signed(Protocol):
    user: Any
    token_id: int | None

    def on_group_event(self, event: dict[str, Any]) -> None: ...


def watch() -> None:
    """Make sure this process's recheck runs (a socket just joined); it stops with the last."""
    process, loop = get_process(), asyncio.get_running_loop()
    task = process.recheck
    if task is None or task.done() or task.get_loop() is not loop:
        process.recheck = spawn(_run(), name="credentials recheck")


async def _run() -> None:
    while _sockets():
        await asyncio.sleep(settings.AUTH_RECHECK_SECONDS)
        try:
            await recheck_once()
        except DatabaseError:
            logger.warning("cannot recheck open sockets' credentials now", exc_info=True)


async def recheck_once() -> int:
    """Send `user.changed` to the sockets whose credentials changed; how many there were."""
    sockets = _sockets()
    passwords = {s.user.pk: s.user.password for s in sockets}
    token_ids = {s.token_id for s in sockets if s.token_id is not None}
    gone, new_password, revoked = await db(astale_credentials(passwords, token_ids))
    told = 0
    for socket in sockets:
        user_id, token_id = socket.user.pk, socket.token_id
        if (
            user_id in gone
            or token_id in revoked
            # A session ends when the password changes (its auth hash does); a token does not.
            or (token_id is None and user_id in new_password)
        ):
            socket.on_group_event(USER_CHANGED)
            told += 1
    return told


def _sockets() -> list[Signed]:
    """This process's sockets: the listeners of users' groups (ChatConsumers, which carry
    their credentials)."""
    listeners: dict[str, Any] = getattr(get_channel_layer(), "listeners", {})
    return cast(
        list[Signed],
        [s for group, members in listeners.items() if group.startswith("user.") for s in members],
    )
