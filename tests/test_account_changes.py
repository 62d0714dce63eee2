"""Changes to a user made outside the actions (the admin, a shell, raw SQL) reach their sockets.

The User model is Django's: web/receivers.py hands its saves to an action, and
realtime/recheck.py bounds what bypasses Django altogether.
"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from realtime import recheck
from realtime.user_events import CLOSE_SESSION_ENDED
from tests.conftest import CaptureEvents
from tests.forms import form_fields
from tests.test_consumers import Socket, open_socket
from tests.test_consumers import session_socket as browser_socket
from web.models import Room

pytestmark = pytest.mark.django_db(transaction=True)

CLOSED = {"type": "websocket.close", "code": CLOSE_SESSION_ENDED}


async def session_socket(user: Any) -> Socket:
    socket, _browser = await browser_socket(user)
    return socket


async def assert_open(ws: Socket) -> None:
    await ws.send({"type": "ping", "ref": "p"})
    assert await ws.recv() == {"type": "pong", "ref": "p"}


def deactivate_in_the_admin(admin: Client, user: Any) -> None:
    """Untick "Active" on the user's change form and save it, as an operator does."""
    url = f"/admin/auth/user/{user.pk}/change/"
    page = admin.get(url)
    assert page.status_code == 200
    fields = form_fields(page.content.decode(), "user_form")
    assert fields.pop("is_active") == ["on"]
    response = admin.post(url, fields)
    assert response.status_code == 302, response.content.decode()[:2000]


async def test_unticking_active_in_the_admin_closes_every_socket_and_stores_nothing_after(
    general: Room, alice: Any, admin_client: Client
) -> None:
    sockets = [await open_socket("alice"), await session_socket(alice)]
    await sync_to_async(deactivate_in_the_admin)(admin_client, alice)
    for ws in sockets:
        # Whatever it sends now is not stored (the store checks the sender too).
        await ws.send(
            {"type": "publish", "room": "general", "body": "late", "client_msg_id": "late"}
        )
    for ws in sockets:
        assert await ws.comm.receive_output(timeout=3) == CLOSED
    await general.arefresh_from_db()
    assert general.last_seq == 0


async def test_saving_a_user_inactive_in_a_shell_closes_every_socket(alice: Any) -> None:
    sockets = [await open_socket("alice"), await session_socket(alice)]
    alice.is_active = False
    await sync_to_async(alice.save)()
    for ws in sockets:
        assert await ws.comm.receive_output(timeout=3) == CLOSED


async def test_a_new_password_closes_the_users_session_sockets_and_not_token_ones(
    alice: Any, bob: Any
) -> None:
    session, token = await session_socket(alice), await open_socket("alice")
    bobs = await session_socket(bob)
    alice.set_password("a new password")
    await sync_to_async(alice.save)()
    assert await session.comm.receive_output(timeout=3) == CLOSED
    await assert_open(token)
    await assert_open(bobs)
    for ws in (token, bobs):
        await ws.comm.disconnect()


def test_saves_that_touch_no_credential_emit_nothing(
    alice: Any, capture_events: CaptureEvents
) -> None:
    with capture_events(0):
        alice.save(update_fields=["last_login"])
    with capture_events(1) as captured:
        alice.first_name = "Alice"
        alice.save()
    assert captured == [(f"user.{alice.pk}", {"type": "user.changed"})]


def test_deleting_a_user_ends_their_sockets(alice: Any, capture_events: CaptureEvents) -> None:
    user_id = alice.pk
    with capture_events(1) as captured:
        alice.delete()
    assert captured[0][0] == f"user.{user_id}"
    assert captured[0][1]["type"] == "session.ended"


async def test_a_recheck_closes_sockets_whose_user_changed_behind_djangos_back(
    alice: Any, bob: Any, charlie: Any
) -> None:
    alices, bobs = await open_socket("alice"), await session_socket(bob)
    bobs_token, charlies = await open_socket("bob"), await open_socket("charlie")
    table = get_user_model()._meta.db_table

    def raw_sql() -> None:
        # A table name, not input.
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET is_active = false WHERE id = %s", [alice.pk])  # noqa: S608
            cursor.execute(f"UPDATE {table} SET password = 'x' WHERE id = %s", [bob.pk])  # noqa: S608

    await sync_to_async(raw_sql)()
    # Every process does this each period (sockets of earlier tests may be told too).
    assert await recheck.recheck_once() >= 2
    assert await alices.comm.receive_output(timeout=3) == CLOSED
    assert await bobs.comm.receive_output(timeout=3) == CLOSED
    for ws in (bobs_token, charlies):  # a password is not a token's credential
        await assert_open(ws)
        await ws.comm.disconnect()
