"""Many (user, room) access checks at once: what get_room_for_user answers, for a batch.

A socket checks a room once, the first time it uses it; a process with a thousand sockets
opening, or twenty publishers each reaching a hundred rooms for the first time, asks
thousands of such questions within a second or two. One at a time they are a query each,
queued on the one thread that runs them (realtime/room_checks.py batches them). Here a
batch costs the cache lookups plus two queries for all the misses: the rooms by slug, and
which of those users are members of which of those rooms.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import User

from web.access import cached_room, checked, remember_room
from web.errors import ApiError, NotFound
from web.models import Membership, Room

FIELDS = ("id", "slug", "title", "private", "owner_id", "last_seq", "created_at")
IN_CHUNK = 500  # pairs per batch of queries: SQLite caps the parameters of one statement


def get_rooms_for_users(pairs: Sequence[tuple[User, str]]) -> list[Room | ApiError]:
    """For each (user, slug): the room as get_room_for_user returns it, or the ApiError it
    raises (NotFound, Forbidden). Each answer is a Room object of its own (callers annotate
    and keep them)."""
    results: list[Room | ApiError | None] = [None] * len(pairs)
    misses = []
    for i, (user, slug) in enumerate(pairs):
        room, found = cached_room(user, slug)
        if room is None:
            misses.append((i, found))
        else:
            results[i] = _answer(room)
    for start in range(0, len(misses), IN_CHUNK):
        chunk = misses[start : start + IN_CHUNK]
        slugs = {pairs[i][1] for i, _ in chunk}
        rows = {row[1]: row for row in Room.objects.filter(slug__in=slugs).values_list(*FIELDS)}
        users = {pairs[i][0].pk for i, _ in chunk}
        members = set(
            Membership.objects.filter(
                room_id__in=[row[0] for row in rows.values()], user_id__in=users
            ).values_list("user_id", "room_id")
        )
        for i, found in chunk:
            user, slug = pairs[i]
            row = rows.get(slug)
            if row is None:
                results[i] = NotFound(f"no room {slug!r}")
                continue
            room = Room.from_db("default", list(FIELDS), list(row))
            room.is_member = is_member = (user.pk, room.pk) in members  # type: ignore[attr-defined]
            remember_room(found, user, room, is_member)
            results[i] = _answer(room)
    return [result for result in results if result is not None]


def _answer(room: Room) -> Room | ApiError:
    try:
        return checked(room)
    except ApiError as error:
        return error
