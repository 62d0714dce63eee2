"""Read-side helpers: who may see which room, and the history they may read."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Exists, OuterRef, Subquery

from web import activity
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

IN_CHUNK = 1000  # ids per IN (...) list: SQLite caps the parameters of one statement


async def aget_room_for_user(user: User, slug: str) -> Room:
    """The room if the user may read and write it; NotFound or Forbidden otherwise."""
    member = Membership.objects.filter(room=OuterRef("pk"), user_id=user.pk)
    room = await Room.objects.annotate(is_member=Exists(member)).filter(slug=slug).afirst()
    if room is None:
        raise NotFound(f"no room {slug!r}")
    if room.private and not room.is_member:
        raise Forbidden(f"you are not a member of {slug!r}")
    return room


async def arooms_for_user(user: User) -> list[dict[str, Any]]:
    """The rooms the user can see, with last_seq and unread count, in one query."""
    member = Membership.objects.filter(room=OuterRef("pk"), user_id=user.pk)
    rooms = (
        Room.objects.visible_to(user)
        .annotate(
            is_member=Exists(member),
            last_read_seq=Subquery(member.values("last_read_seq")[:1]),
        )
        .order_by("slug")
    )
    result = []
    async for room in rooms:
        read = room.last_read_seq or 0
        result.append(
            {
                **room_json(room),
                "member": room.is_member,
                "owner": room.owner_id == user.pk,
                # seqs are gap-free, so the unread count is a subtraction, not a COUNT(*).
                "unread": max(room.last_seq - read, 0) if room.is_member else 0,
            }
        )
    return result


def room_json(room: Room) -> dict[str, Any]:
    return {
        "slug": room.slug,
        "title": room.title,
        "private": room.private,
        "last_seq": room.last_seq,
    }


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
