"""Read-side helpers: who may see which room, and the history they may read."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import msgspec
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, connections
from django.db.models import Exists, OuterRef, Subquery

from project import db_router, metrics
from web import activity, cache
from web.errors import Forbidden, NotFound
from web.models import (
    ApiToken,
    Inbox,
    Membership,
    Message,
    Notification,
    Room,
    ServiceKey,
    Webhook,
)

MAX_SEQ = 2**63 - 1
IN_CHUNK = 1000  # ids per IN (...) list: SQLite caps the parameters of one statement
# What may appear in a cache key as it is (memcached refuses spaces and control characters).
SAFE_SLUG = re.compile(r"^[A-Za-z0-9_-]{1,50}$")

P = ParamSpec("P")
R = TypeVar("R")


def read_in_thread(function: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """A sync read run from async code in one thread hop, handing its database connection
    back to the pool at the end: the caller then awaits the network holding none."""

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        finally:
            # Only with the pool: without it the next read would open a new connection. Never
            # inside a transaction (tests run in one), where closing would break it.
            if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
                connection.close()
            if db_router.configured():
                replica = connections[db_router.REPLICA]
                if getattr(replica, "pool", None) is not None:
                    replica.close()

    return sync_to_async(functools.wraps(function)(call), thread_sensitive=True)


class CachedRoom(msgspec.Struct, array_like=True):
    """What room:<slug> holds: the room without last_seq, which moves with every message."""

    id: int
    slug: str
    title: str
    private: bool
    owner_id: int | None


class ListedRoom(msgspec.Struct, array_like=True):
    """One room of rooms:<user>; seq_tag is the room version its last_seq was read at."""

    id: int
    slug: str
    title: str
    private: bool
    owner_id: int | None
    member: bool
    last_read_seq: int
    last_seq: int
    seq_tag: int | None = None


def get_room_for_user(user: User, slug: str) -> Room:
    """The room if the user may read and write it; NotFound or Forbidden otherwise.

    Through the cache (room:<slug> and member:<user>:<slug>): no query when both are there.
    web/room_checks.py checks many (user, room) pairs at once the same way.
    """
    room, found = cached_room(user, slug)
    if room is None:
        member_of = Membership.objects.filter(room=OuterRef("pk"), user_id=user.pk)
        queried = Room.objects.annotate(is_member=Exists(member_of)).filter(slug=slug).first()
        if queried is None:
            raise NotFound(f"no room {slug!r}")
        remember_room(found, user, queried, queried.is_member)
        room = queried
    return checked(room)


def _room_keys(user: User, slug: str) -> tuple[list[str], list[str]]:
    return [f"room:{slug}", f"member:{user.pk}:{slug}"], [
        cache.EPOCH,
        cache.ROOMS,
        cache.user_version(user.pk),
    ]


def cached_room(user: User, slug: str) -> tuple[Room | None, cache.Read | None]:
    """The room and whether the user is a member (`is_member`) from the cache, or None; and
    what the cache answered, to write a miss back with `remember_room` (None: no cache)."""
    keys, versions = _room_keys(user, slug)
    # A slug no room can have is never a key: it is looked up (and not found) uncached.
    found = cache.read("room", keys, versions) if SAFE_SLUG.match(slug) else None
    if found is None:
        return None, None
    cached = found.entry(keys[0], CachedRoom, found.tags(*versions[:2]))
    member = found.entry(keys[1], bool, found.tags(*versions))
    if cached is None or member is None:
        metrics.CACHE_LOOKUPS.labels("room", "miss").inc()
        return None, found
    metrics.CACHE_LOOKUPS.labels("room", "hit").inc()
    room = Room.from_db(
        "default",
        ["id", "slug", "title", "private", "owner_id"],
        [cached.id, cached.slug, cached.title, cached.private, cached.owner_id],
    )  # last_seq and created_at deferred: read from the database if ever touched
    room.is_member = member  # type: ignore[attr-defined]  # as get_room_for_user annotates
    return room, found


def remember_room(found: cache.Read | None, user: User, room: Room, is_member: bool) -> None:
    """Write a room read from the database back to the cache (after `cached_room` missed)."""
    if found is None:
        return
    keys, versions = _room_keys(user, room.slug)
    row = CachedRoom(room.pk, room.slug, room.title, room.private, room.owner_id)
    found.write(
        {
            keys[0]: (found.tags(*versions[:2]), row),
            keys[1]: (found.tags(*versions), is_member),
        }
    )


def checked(room: Room) -> Room:
    """The room, if the user it was read for (its `is_member`) may use it; else Forbidden."""
    if room.private and not room.is_member:  # type: ignore[attr-defined]
        raise Forbidden(f"you are not a member of {room.slug!r}")
    return room


aget_room_for_user = read_in_thread(get_room_for_user)


def rooms_for_user(user: User) -> list[dict[str, Any]]:
    """The rooms the user can see, with last_seq and unread count.

    One query without the cache, and never more with it (rooms:<user>): none when no room
    the user sees had a message since it was cached, one otherwise (the last_seqs of the
    rooms that did, or the whole list if their rooms or read markers changed).
    """
    key = f"rooms:{user.pk}"
    versions = [cache.EPOCH, cache.ROOMS, cache.user_version(user.pk), cache.reads_version(user.pk)]
    found = cache.read("rooms", [key], versions)
    if found is None:
        # Uncached, so the replica may answer (trailing it by its lag). What the cache keeps is
        # read from the primary: a replica's older answer tagged with the current versions
        # would stay stale after the replica caught up (docs/data.md, "The read replica").
        return [_listed_json(room, user) for room in _from_replica(lambda: _listed_rooms(user))]
    tags = found.tags(*versions)
    cached = found.tagged(key, list[ListedRoom])
    known = cached[1] if cached is not None else []
    # Taken before the database is read, so a last_seq read after may be tagged with them.
    room_versions = found.more_versions([cache.room_version(room.id) for room in known])
    if room_versions is None:
        return [_listed_json(room, user) for room in _listed_rooms(user)]
    if cached is not None and cached[0] == tags:
        metrics.CACHE_LOOKUPS.labels("rooms", "hit").inc()
        rooms = known
        stale = [r for r in rooms if r.seq_tag != room_versions[cache.room_version(r.id)]]
        if not stale:
            return [_listed_json(room, user) for room in rooms]
        ids = [room.id for room in stale]
        by_id = Room.objects.filter(pk__in=ids) if len(ids) <= IN_CHUNK else Room.objects.all()
        seqs = dict(by_id.values_list("pk", "last_seq"))
        for room in stale:
            room.last_seq = seqs.get(room.id, room.last_seq)
            room.seq_tag = room_versions[cache.room_version(room.id)] if room.id in seqs else None
    else:
        metrics.CACHE_LOOKUPS.labels("rooms", "miss").inc()
        rooms = _listed_rooms(user)
        # A room the previous entry did not list has no version taken yet: None, read next time.
        for room in rooms:
            room.seq_tag = room_versions.get(cache.room_version(room.id))
    found.write({key: (tags, rooms)})
    return [_listed_json(room, user) for room in rooms]


arooms_for_user = read_in_thread(rooms_for_user)


def _listed_rooms(user: User) -> list[ListedRoom]:
    """The rooms the user can see, in one query."""
    member = Membership.objects.filter(room=OuterRef("pk"), user_id=user.pk)
    rooms = (
        Room.objects.visible_to(user)
        .annotate(
            is_member=Exists(member),
            last_read_seq=Subquery(member.values("last_read_seq")[:1]),
        )
        .order_by("slug")
    )
    return [
        ListedRoom(
            room.pk,
            room.slug,
            room.title,
            room.private,
            room.owner_id,
            room.is_member,
            room.last_read_seq or 0,
            room.last_seq,
        )
        for room in rooms
    ]


def _listed_json(room: ListedRoom, user: User) -> dict[str, Any]:
    return {
        "slug": room.slug,
        "title": room.title,
        "private": room.private,
        "last_seq": room.last_seq,
        "member": room.member,
        "owner": room.owner_id == user.pk,
        # seqs are gap-free, so the unread count is a subtraction, not a COUNT(*).
        "unread": max(room.last_seq - room.last_read_seq, 0) if room.member else 0,
    }


def room_json(room: Room) -> dict[str, Any]:
    return {
        "slug": room.slug,
        "title": room.title,
        "private": room.private,
        "last_seq": room.last_seq,
    }


def _from_replica(read: Callable[[], R]) -> R:
    """`read()` on the replica if it is usable, else (or if it fails) on the primary."""
    return _try_replica(read)[0]


def _try_replica(read: Callable[[], R]) -> tuple[R, bool]:
    """`read()`'s answer, and whether the replica gave it (else the primary did)."""
    if not db_router.usable():
        return read(), False
    try:
        with db_router.replica_reads():
            return read(), True
    except DatabaseError as error:
        db_router.failed(error)
        return read(), False


def history_page(
    room: Room, after: int | None, before: int | None, limit: int
) -> list[dict[str, Any]]:
    """Up to `limit` message frames in seq order: seq > after, or seq < before (neither: the
    newest). From the replica when its page is the primary's, else from the primary.

    A replica holds a prefix of the primary's commits and seqs are gap-free, so its page is
    right when it reaches the edge the client asked for: `limit` rows after `after`, or the
    row just below `before`. Short of that, it is right only if it reaches the room's
    last_seq on the primary (one lookup by key); otherwise the primary is read. A client thus
    never misses a message it was acked because the replica lags.
    """
    frames, from_replica = _try_replica(lambda: _history(room, after, before, limit))
    if not from_replica or _reaches_edge(frames, after, before, limit):
        return frames
    top = frames[-1]["seq"] if frames else (after or 0)
    # The room as this request read it from the primary (its room check), when not cached.
    last_seq: int | None = room.last_seq if "last_seq" not in room.get_deferred_fields() else None
    if last_seq is None:
        last_seq = Room.objects.filter(pk=room.pk).values_list("last_seq", flat=True).first()
    if last_seq is None or top >= last_seq:
        return frames
    db_router.fallback("behind")
    return _history(room, after, before, limit)


ahistory_page = read_in_thread(history_page)


def _history(room: Room, after: int | None, before: int | None, limit: int) -> list[dict[str, Any]]:
    if after is not None:
        rows = Message.objects.page_after(room.pk, after, limit)
        return [m.to_event(room.slug, m.sender.get_username()) for m in rows]
    rows = Message.objects.page_before(room.pk, MAX_SEQ if before is None else before, limit)
    return [m.to_event(room.slug, m.sender.get_username()) for m in rows][::-1]


def _reaches_edge(
    frames: list[dict[str, Any]], after: int | None, before: int | None, limit: int
) -> bool:
    if after is not None:
        return len(frames) >= limit
    edge = (MAX_SEQ if before is None else before) - 1
    return edge <= 0 or (bool(frames) and frames[-1]["seq"] >= edge)


async def amessages_after(room: Room, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` message frames with seq > after, in seq order."""
    return [
        m.to_event(room.slug, m.sender.get_username())
        async for m in Message.objects.page_after(room.pk, after, limit)
    ]


async def amessages_before(room: Room, before: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` message frames with seq < before, in seq order."""
    frames = [
        m.to_event(room.slug, m.sender.get_username())
        async for m in Message.objects.page_before(room.pk, before, limit)
    ]
    frames.reverse()
    return frames


async def alast_seq(room_id: int) -> int:
    """The room's current last_seq, read fresh from the database."""
    value = await Room.objects.filter(pk=room_id).values_list("last_seq", flat=True).afirst()
    if value is None:
        raise NotFound("room is gone")
    return value


async def aonline_users(room: Room) -> list[str]:
    """The usernames with a socket subscribed to the room now (kept by realtime/presence.py)."""
    if not settings.REDIS_URL:
        return activity.online_users(room.pk)  # this process's memory: no wait
    return await sync_to_async(activity.online_users, thread_sensitive=False)(room.pk)


async def astale_credentials(
    passwords: dict[Any, str], token_ids: set[int]
) -> tuple[set[Any], set[Any], set[int]]:
    """Of these users (id -> the password hash a socket holds) and tokens: the users who are
    gone or inactive, those with another password now, and the tokens that were revoked."""
    from django.contrib.auth import get_user_model

    gone, new_password, revoked = set(passwords), set(), set()
    ids = list(passwords)
    for start in range(0, len(ids), IN_CHUNK):
        rows = get_user_model().objects.filter(pk__in=ids[start : start + IN_CHUNK])
        async for pk, active, password in rows.values_list("pk", "is_active", "password"):
            if active:
                gone.discard(pk)
            if password != passwords[pk]:
                new_password.add(pk)
    tokens = list(token_ids)
    for start in range(0, len(tokens), IN_CHUNK):
        ended = ApiToken.objects.filter(pk__in=tokens[start : start + IN_CHUNK]).exclude(
            revoked_at__isnull=True
        )
        revoked.update([pk async for pk in ended.values_list("pk", flat=True)])
    return gone, new_password, revoked


async def awebhooks_for_user(user: User) -> list[Webhook]:
    """The user's webhooks, oldest first."""
    return [hook async for hook in Webhook.objects.filter(user_id=user.pk).order_by("pk")]


async def anotifications_after(user_id: Any, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` of the user's notification frames with seq > after, in seq order."""
    return [n.to_frame() async for n in Notification.objects.page_after(user_id, after, limit)]


async def anotification_counts(user_id: Any) -> tuple[int, int]:
    """The user's newest notification seq and their unread count, read fresh."""
    inbox = await Inbox.objects.filter(user_id=user_id).afirst()
    return (inbox.last_seq, inbox.unread) if inbox is not None else (0, 0)


async def aservice_for_key(raw: str) -> ServiceKey | None:
    """The live service key with this raw value, or None."""
    return await ServiceKey.objects.afor_raw(raw)
