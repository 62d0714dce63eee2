"""Per-user notifications: mentions, backends' notifies, read markers, service keys.

Like every action: validate (check_*), change state in one transaction (do_*),
and emit through realtime/events.py, which sends once it commits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from realtime import events
from web import webhooks
from web.errors import BadRequest, NotFound
from web.models import IdempotencyKey, Inbox, Membership, Notification, Room, ServiceKey
from web.models.notifications import Draft

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from web.models import Message

PAYLOAD_MAX_BYTES = 16 * 1024
NOTIFY_MAX_USERS = 1000
IDEMPOTENCY_WINDOW = timedelta(hours=24)
EXCERPT_CHARS = 200
KIND_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces
# `@name` not inside a word or an address; Django usernames hold letters, digits and @.+-_.
MENTION_RE = re.compile(r"(?<![\w.+@-])@([\w.@+-]{1,150})")


# --- Storing and emitting -----------------------------------------------------------------


def _store(drafts: Sequence[Draft], payloads: Sequence[dict[str, Any]]) -> list[Notification]:
    """Store, then (after commit) push each to its user's sockets and hand it to webhooks."""
    stored = Notification.objects.store(drafts, payloads)
    if stored:
        events.send_notifications([(n.user_id, n.seq, n.to_frame()) for n in stored])
        webhooks.schedule_deliveries([n.pk for n in stored])
    return stored


# --- Mentions -------------------------------------------------------------------------------


def mentioned_names(body: str) -> set[str]:
    """The usernames a body may mention: `@bob.` could be bob (end of a sentence) or bob."""
    names = set()
    for name in MENTION_RE.findall(body):
        names.add(name)
        names.add(name.rstrip("."))
    names.discard("")
    return names


def do_notify_mentions(sent: Sequence[tuple[Room, User, Message]]) -> list[Notification]:
    """Notify the users that new messages mention, in the messages' transaction.

    A user is notified once per message, never for their own, and only if they can read
    the room (public: any active user; private: members). Two queries for any batch.
    """
    named = [
        (room, sender, message, mentioned_names(message.body)) for room, sender, message in sent
    ]
    names = set().union(*(n for *_, n in named))
    if not names:
        return []
    users = dict(
        get_user_model()
        .objects.filter(username__in=names, is_active=True)
        .values_list("username", "pk")
    )
    private = {room.pk for room, *_ in named if room.private}
    members: set[tuple[int, Any]] = set()
    if users and private:
        members = set(
            Membership.objects.filter(room_id__in=private, user_id__in=users.values()).values_list(
                "room_id", "user_id"
            )
        )
    drafts: list[Draft] = []
    payloads: list[dict[str, Any]] = []
    for room, sender, message, message_names in named:
        targets = sorted({users[name] for name in message_names if name in users} - {sender.pk})
        targets = [u for u in targets if not room.private or (room.pk, u) in members]
        if not targets:
            continue
        payloads.append(
            {
                "room": room.slug,
                "seq": message.seq,
                "sender": sender.get_username(),
                "excerpt": message.body[:EXCERPT_CHARS],
            }
        )
        drafts += [(user_id, "mention", len(payloads) - 1) for user_id in targets]
    return _store(drafts, payloads)


# --- Backends' notifies (POST /api/notify) --------------------------------------------------


@dataclass(frozen=True)
class NotifyRequest:
    users: list[str] | None  # or
    room: str | None
    kind: str
    payload: dict[str, Any]
    idempotency_key: str | None


def check_notify(data: dict[str, Any]) -> NotifyRequest:
    users, room = data.get("users"), data.get("room")
    if (users is None) == (room is None):
        raise BadRequest("give either users (a list of usernames) or room (a slug)")
    if users is not None:
        if not isinstance(users, list) or not all(
            isinstance(u, str) and 0 < len(u) <= 150 and "\x00" not in u for u in users
        ):
            raise BadRequest("users must be a list of usernames")
        users = list(dict.fromkeys(users))  # each user once, in the order given
        if not 1 <= len(users) <= NOTIFY_MAX_USERS:
            raise BadRequest(f"users must name 1 to {NOTIFY_MAX_USERS} users")
    if room is not None and (not isinstance(room, str) or not 0 < len(room) <= 50):
        raise BadRequest("room must be a room's slug")
    kind = data.get("kind")
    if not isinstance(kind, str) or not KIND_RE.match(kind):
        raise BadRequest("kind must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    payload = data.get("payload", {})
    if not isinstance(payload, dict):
        raise BadRequest("payload must be a JSON object")
    encoded = orjson.dumps(payload)
    if len(encoded) > PAYLOAD_MAX_BYTES:
        raise BadRequest(f"payload is over {PAYLOAD_MAX_BYTES} bytes as JSON")
    if b"\\u0000" in encoded:
        raise BadRequest("payload must not contain NUL characters")
    key = data.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.match(key)):
        raise BadRequest("idempotency_key must be 1-200 printable ASCII characters")
    return NotifyRequest(users, room, kind, payload, key)


@dataclass(frozen=True)
class NotifyResult:
    status: int
    response: dict[str, Any]
    replayed: bool  # the answer to an earlier request with the same idempotency key


def do_notify(service: ServiceKey, request: NotifyRequest) -> NotifyResult:
    """Notify users (unknown ones are listed and skipped) or a room's members, once per key.

    A repeat of an idempotency key within 24 hours gets the first answer and stores nothing;
    of two concurrent ones, the second fails on the key's unique constraint, rolls back
    whole, and answers with the first's response.
    """
    key = request.idempotency_key
    if key is not None:
        first = _first_answer(service, key)
        if first is not None:
            return first
    try:
        with transaction.atomic():
            user_ids, unknown = _recipients(request)
            stored = _store([(user_id, request.kind, 0) for user_id in user_ids], [request.payload])
            response = {"notified": len(stored), "unknown": unknown}
            if key is not None:
                IdempotencyKey.objects.create(
                    service=service, key=key, status=200, response=response
                )
    except IntegrityError:
        first = _first_answer(service, key) if key is not None else None
        if first is None:
            raise
        return first
    return NotifyResult(200, response, replayed=False)


def _first_answer(service: ServiceKey, key: str) -> NotifyResult | None:
    found = IdempotencyKey.objects.filter(service=service, key=key).first()
    if found is None:
        return None
    if found.created_at < timezone.now() - IDEMPOTENCY_WINDOW:
        found.delete()  # expired: the key may be used afresh
        return None
    return NotifyResult(found.status, found.response, replayed=True)


def _recipients(request: NotifyRequest) -> tuple[list[Any], list[str]]:
    """The users' ids to notify, and the names given that are not active users."""
    if request.room is not None:
        room = Room.objects.filter(slug=request.room).first()
        if room is None:
            raise NotFound(f"no room {request.room!r}")
        ids = list(
            Membership.objects.filter(room=room, user__is_active=True)
            .order_by("user_id")
            .values_list("user_id", flat=True)[: NOTIFY_MAX_USERS + 1]
        )
        if len(ids) > NOTIFY_MAX_USERS:
            raise BadRequest(f"room {room.slug!r} has over {NOTIFY_MAX_USERS} members")
        return ids, []
    assert request.users is not None  # noqa: S101 -- check_notify: users or room
    found = dict(
        get_user_model()
        .objects.filter(username__in=request.users, is_active=True)
        .values_list("username", "pk")
    )
    return [found[u] for u in request.users if u in found], [
        u for u in request.users if u not in found
    ]


# --- Read markers ---------------------------------------------------------------------------


def do_mark_notifications_read(user: User, up_to: int) -> tuple[int, int]:
    """Move the user's read marker forward (never back); (the marker, unread count)."""
    if up_to < 0:
        raise BadRequest("up_to must be >= 0")
    with transaction.atomic():
        Inbox.objects.bulk_create([Inbox(user_id=user.pk)], ignore_conflicts=True)
        inbox = Inbox.objects.select_for_update().get(user_id=user.pk)
        up_to = min(up_to, inbox.last_seq)
        if up_to > inbox.read_up_to:
            Notification.objects.mark_read(user.pk, inbox.read_up_to, up_to)
            inbox.read_up_to = up_to
            inbox.save(update_fields=["read_up_to"])
            events.send_notifications_read(user.pk, up_to, inbox.unread)
    return inbox.read_up_to, inbox.unread


# --- Service keys ---------------------------------------------------------------------------


def do_issue_service_key(name: str) -> str:
    """Issue a key a backend publishes notifications with; the raw key (stored hashed)."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise BadRequest("name must be 1-100 characters")
    _, raw = ServiceKey.objects.issue(name)
    return raw


def do_revoke_service_keys(keys: QuerySet[ServiceKey]) -> int:
    """Revoke keys: they stop authenticating at once."""
    return keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
