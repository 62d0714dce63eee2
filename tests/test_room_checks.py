"""Room access checks in batches: web/room_checks.py answers as get_room_for_user does, for
any number of pairs in two queries; realtime/room_checks.py gathers a process's checks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from realtime import room_checks as realtime_checks
from realtime.room_checks import check_room
from web import actions
from web.access import get_room_for_user
from web.errors import ApiError, Forbidden, NotFound
from web.room_checks import get_rooms_for_users

pytestmark = pytest.mark.django_db(transaction=True)


def answer_of(user: Any, slug: str) -> tuple[str, bool | None]:
    """get_room_for_user's answer, as (room slug or error class, is_member)."""
    try:
        room = get_room_for_user(user, slug)
    except ApiError as error:
        return type(error).__name__, None
    return room.slug, room.is_member  # type: ignore[attr-defined]


def summary(result: Any) -> tuple[str, bool | None]:
    if isinstance(result, ApiError):
        return type(result).__name__, None
    return result.slug, result.is_member


@pytest.fixture
def world(alice: Any, bob: Any, charlie: Any, general: Any) -> list[tuple[Any, str]]:
    """Every kind of pair: public room member and not, private member and not, no room."""
    den = actions.do_create_room(alice, "den", "Den", private=True)
    actions.do_add_member(alice, den, "bob")
    actions.do_create_room(bob, "lobby", "Lobby", private=False)
    people = (alice, bob, charlie)
    return [(user, slug) for user in people for slug in ("general", "den", "lobby", "nowhere")]


def test_a_batch_answers_as_one_check_each_in_two_queries(
    world: list[tuple[Any, str]],
) -> None:
    expected = [answer_of(user, slug) for user, slug in world]
    assert ("Forbidden", None) in expected
    assert ("NotFound", None) in expected
    cache.clear()
    with CaptureQueriesContext(connection) as captured:
        results = get_rooms_for_users(world)
    assert [summary(r) for r in results] == expected
    assert len(captured.captured_queries) == 2  # rooms by slug, then memberships
    # Each answer is its own object: a socket annotates and keeps it.
    rooms = [r for r in results if not isinstance(r, ApiError)]
    assert len({id(r) for r in rooms}) == len(rooms)
    # A warm cache answers the same; only the room that does not exist is asked again
    # (never cached, as with get_room_for_user), and no membership.
    with CaptureQueriesContext(connection) as captured:
        again = get_rooms_for_users(world)
    assert [summary(r) for r in again] == expected
    assert len(captured.captured_queries) == 1


async def test_checks_asked_together_go_in_one_batch(
    world: list[tuple[Any, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    real = realtime_checks.aget_rooms_for_users

    async def counted(pairs: list[tuple[Any, str]]) -> list[Any]:
        batches.append(len(pairs))
        return await real(pairs)

    monkeypatch.setattr(realtime_checks, "aget_rooms_for_users", counted)
    expected = [await sync_to_async(answer_of)(user, slug) for user, slug in world]

    async def ask(user: Any, slug: str) -> tuple[str, bool | None]:
        try:
            return summary(await check_room(user, slug))
        except (NotFound, Forbidden) as error:
            return type(error).__name__, None

    answers = await asyncio.gather(*(ask(user, slug) for user, slug in world))
    assert answers == expected
    assert batches == [len(world)]


async def test_an_unknown_room_is_not_found_through_the_batch(charlie: Any) -> None:
    with pytest.raises(NotFound):
        await check_room(charlie, "no-such-room")
