"""Every state change lives here: check_* validates, do_* changes state.

Only these functions emit realtime events: realtime/events.py's functions,
called inside the action's transaction, send once it commits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from project import metrics
from realtime import events
from web import cache
from web.actions import notifications
from web.errors import ApiError, BadRequest, Conflict, Forbidden, NotFound, TooLarge
from web.models import (
    ApiToken,
    Draft,
    Membership,
    Message,
    Refused,
    Room,
    Stored,
)

if TYPE_CHECKING:
    from web.models.async_database import AsyncDatabase

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$")
CLIENT_MSG_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def check_room_slug(slug: str) -> str:
    if not SLUG_RE.match(slug):
        raise BadRequest(
            "slug must be 1-50 lowercase letters, digits or inner hyphens", code="bad_request"
        )
    return slug


def check_room_title(title: str) -> str:
    title = title.strip()
    if not 1 <= len(title) <= 200:
        raise BadRequest("title must be 1-200 characters")
    return title


def check_body(body: str) -> str:
    if len(body) > settings.MESSAGE_MAX_CHARS:
        raise TooLarge(f"body is over {settings.MESSAGE_MAX_CHARS} characters")
    if not body.strip():
        raise BadRequest("body must not be empty")
    if "\x00" in body:
        raise BadRequest("body must not contain NUL characters")
    return body


def check_client_msg_id(client_msg_id: str) -> str:
    if not CLIENT_MSG_ID_RE.match(client_msg_id):
        raise BadRequest("client_msg_id must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return client_msg_id


def check_owner(user: User, room: Room) -> None:
    if room.owner_id != user.pk:
        raise Forbidden("only the room's owner can do that")


def do_create_room(owner: User, slug: str, title: str, private: bool) -> Room:
    slug = check_room_slug(slug)
    title = check_room_title(title)
    try:
        with transaction.atomic():
            room = Room.objects.create(slug=slug, title=title, private=private, owner=owner)
            Membership.objects.create(user=owner, room=room, role=Membership.Role.OWNER)
            cache.created_room(slug, private)
            cache.changed_memberships([owner.pk])
    except IntegrityError:
        raise Conflict(f"room {slug!r} already exists") from None
    return room


def do_add_member(acting: User, room: Room, username: str) -> Membership:
    check_owner(acting, room)
    user = _get_active_user(username)
    membership, created = Membership.objects.get_or_create(user=user, room=room)
    if created:
        cache.changed_memberships([user.pk])
    return membership


def do_remove_member(acting: User, room: Room, username: str) -> None:
    check_owner(acting, room)
    user = _get_active_user(username)
    if user.pk == room.owner_id:
        raise BadRequest("the owner cannot be removed from their room")
    with transaction.atomic():
        deleted, _ = Membership.objects.filter(user=user, room=room).delete()
        if not deleted:
            raise NotFound(f"{username!r} is not a member of {room.slug!r}")
        cache.changed_memberships([user.pk])
        if room.private:
            # Open sockets of the removed user stop receiving this room.
            events.send_room_revoked(user.pk, room.pk, room.slug)


@dataclass(frozen=True)
class SentMessage:
    message: Message
    created: bool
    frame: dict[str, Any]


@dataclass(frozen=True)
class Outgoing:
    """One publish of a batch: the sender, the sender's view of the room, and the message."""

    sender: User
    room: Room  # read only: the event loop may hold this instance (a socket's checked rooms)
    body: str
    client_msg_id: str
    member: bool = False  # the sender is known to be a member of the room already


def do_send_message(sender: User, room: Room, body: str, client_msg_id: str) -> SentMessage:
    """Store a message with the room's next seq, then broadcast it after commit.

    A retry with the same client_msg_id by the same sender returns the stored
    message and broadcasts nothing.
    """
    member = bool(getattr(room, "is_member", False))
    (result,) = do_send_messages([Outgoing(sender, room, body, client_msg_id, member)])
    if isinstance(result, ApiError):
        raise result
    return result


def do_send_messages(batch: Sequence[Outgoing]) -> list[SentMessage | ApiError]:
    """Store a batch of publishes (to any rooms) in order, in one transaction; then broadcast.

    Each publish gets its own result: the stored message, or the error that refused it
    (refusing one does not refuse the others).
    """
    results, valid = _checked(batch)
    joining = {(batch[i].sender.pk, batch[i].room.pk) for i in valid if _joins(batch[i])}
    if joining:
        # Posting in a public room joins it, so it shows up with unread counts. Rooms from
        # aget_room_for_user say whether the sender is a member already: then nothing to do.
        # In room id order: the insert's foreign-key checks lock the rooms (FOR KEY SHARE),
        # and another batch's store locks them FOR UPDATE in id order; in any other order
        # the two can deadlock (tests/test_actions.py, batches over the same rooms).
        Membership.objects.bulk_create(
            [
                Membership(user_id=user_id, room_id=room_id)
                for user_id, room_id in sorted(joining, key=lambda pair: (pair[1], pair[0]))
            ],
            ignore_conflicts=True,
        )
        cache.changed_memberships(user_id for user_id, _ in joining)
    # Mentions are stored in the messages' transaction (store_batch alone commits by itself
    # on PostgreSQL): a message is never stored without them, nor they without it. Only a
    # batch with an "@" pays for the longer transaction.
    mentioning = any("@" in batch[i].body for i in valid)
    with transaction.atomic() if mentioning else nullcontext():
        stored = Message.objects.store_batch(_drafts(batch, valid))
        if mentioning:
            notifications.do_notify_mentions(
                [
                    (batch[i].room, batch[i].sender, found[0])
                    for i, found in zip(valid, stored, strict=True)
                    if isinstance(found, tuple) and found[1]
                ]
            )
    created = _answer(batch, valid, stored, results)
    if created:
        cache.changed_last_seq(room_id for room_id, _, _ in created)
        events.send_messages(created)
    return [r for r in results if r is not None]


def stores_in_one_statement(batch: Sequence[Outgoing]) -> bool:
    """Whether ado_send_messages may store the batch: nothing to write but the messages (no
    sender joining a room by posting in it, no mention to notify)."""
    return not any(_joins(out) or "@" in out.body for out in batch)


async def ado_send_messages(
    batch: Sequence[Outgoing], database: AsyncDatabase
) -> list[SentMessage | ApiError]:
    """do_send_messages for a batch that stores_in_one_statement, awaited on the event loop:
    its one statement (committed by itself) through `database`, then the same broadcast."""
    results, valid = _checked(batch)
    stored = await Message.objects.astore_batch(_drafts(batch, valid), database)
    created = _answer(batch, valid, stored, results)
    if created:
        await cache.achanged_last_seq(room_id for room_id, _, _ in created)
        events.send_messages(created, committed=True)
    return [r for r in results if r is not None]


Results = list[SentMessage | ApiError | None]


def _checked(batch: Sequence[Outgoing]) -> tuple[Results, list[int]]:
    """A result slot per publish, the refused ones filled, and the indexes of the others."""
    results: Results = [None] * len(batch)
    valid: list[int] = []
    for i, out in enumerate(batch):
        try:
            check_body(out.body)
            check_client_msg_id(out.client_msg_id)
        except ApiError as error:
            results[i] = error
        else:
            valid.append(i)
    return results, valid


def _joins(out: Outgoing) -> bool:
    """Whether storing the publish makes its sender a member of its (public) room."""
    return not out.room.private and not out.member


def _drafts(batch: Sequence[Outgoing], valid: list[int]) -> list[Draft]:
    return [
        Draft(batch[i].room.pk, batch[i].sender.pk, batch[i].body, batch[i].client_msg_id)
        for i in valid
    ]


def _answer(
    batch: Sequence[Outgoing], valid: list[int], stored: list[Stored], results: Results
) -> list[tuple[int, int, dict[str, Any]]]:
    """Fill the results from what was stored; the new messages' (room id, seq, frame), in
    room and seq order, to broadcast."""
    created: list[tuple[int, int, dict[str, Any]]] = []
    for i, found in zip(valid, stored, strict=True):
        out = batch[i]
        if found is None:
            results[i] = NotFound(f"no room {out.room.slug!r}")
            continue
        if isinstance(found, Refused):
            results[i] = Forbidden("your account is deactivated")
            continue
        message, is_new = found
        frame = message.to_event(out.room.slug, out.sender.get_username())
        results[i] = SentMessage(message, is_new, frame)
        if is_new:
            created.append((out.room.pk, message.seq, frame))
    if created:
        metrics.MESSAGES_STORED.inc(len(created))
        created.sort(key=lambda room_seq_frame: room_seq_frame[:2])
    return created


@dataclass(frozen=True)
class ReadState:
    room: str
    last_read_seq: int
    unread: int  # the room's last seq minus the marker: seqs are gap-free


def do_mark_read(user: User, room: Room, seq: int) -> int:
    """Move the user's read marker forward (never back) and return it."""
    return do_read(user, room, seq).last_read_seq


def do_read(user: User, room: Room, seq: int, origin: str | None = None) -> ReadState:
    """Move the user's read marker forward (never back; past the room's last seq is its
    last seq) and, if it moved, tell the user's sockets but `origin` (the asking socket)."""
    if seq < 0:
        raise BadRequest("seq must be >= 0")
    with transaction.atomic():
        # Fresh, not the caller's `room`: a socket keeps the rooms it checked for a while.
        last_seq = Room.objects.filter(pk=room.pk).values_list("last_seq", flat=True).first()
        if last_seq is None:
            raise NotFound(f"no room {room.slug!r}")
        seq = min(seq, last_seq)
        membership, joined = Membership.objects.get_or_create(user=user, room=room)
        if joined:
            cache.changed_memberships([user.pk])
        mine = Membership.objects.filter(pk=membership.pk)
        moved = seq > membership.last_read_seq and mine.filter(last_read_seq__lt=seq).update(
            last_read_seq=seq
        )
        marker = seq if moved else mine.values_list("last_read_seq", flat=True).get()
        unread = max(last_seq - marker, 0)
        if moved:
            cache.changed_read_markers(user.pk)
            events.send_unread(user.pk, room.pk, room.slug, unread, marker, origin)
    return ReadState(room.slug, marker, unread)


def do_issue_token(username: str, *, create: bool = False, name: str = "") -> str:
    """Issue an API token for the user (creating the user if asked) and return it raw."""
    User = get_user_model()
    if create:
        user, _ = User.objects.get_or_create(username=username)
    else:
        user = _get_active_user(username)
    _, raw = ApiToken.objects.issue(user, name=name)
    return raw


def _get_active_user(username: str) -> Any:
    User = get_user_model()
    try:
        return User.objects.get(username=username, is_active=True)
    except User.DoesNotExist:
        raise NotFound(f"no user {username!r}") from None


def do_revoke_tokens(tokens: QuerySet[ApiToken]) -> int:
    """Revoke tokens: they stop authenticating, and sockets opened with them close."""
    with transaction.atomic():
        live = list(tokens.filter(revoked_at__isnull=True).values_list("pk", "user_id"))
        ApiToken.objects.filter(pk__in=[pk for pk, _ in live]).update(revoked_at=timezone.now())
        by_user: dict[int, list[int]] = {}
        for pk, user_id in live:
            by_user.setdefault(user_id, []).append(pk)
        for user_id, token_ids in by_user.items():
            events.send_session_ended(user_id, token_ids=token_ids)
    return len(live)


def do_end_session(user: User, session_key: str | None) -> None:
    """After a logout: close the sockets that session opened."""
    if session_key:
        events.send_session_ended(user.pk, session_key=session_key)


def do_deactivate_user(user: User) -> None:
    """Deactivate a user: nothing of theirs authenticates any more, and every socket closes."""
    with transaction.atomic():
        type(user).objects.filter(pk=user.pk).update(is_active=False)
        user.is_active = False
        do_end_user_sockets(user.pk)


def do_check_user_sockets(user: User) -> None:
    """After the user's row was saved outside these actions (the admin, a shell): a
    deactivated user's sockets close; otherwise each checks its credentials again (a
    changed password ends the user's sessions, not their tokens). After commit."""
    if not user.is_active:
        do_end_user_sockets(user.pk)
        return
    events.send_user_changed(user.pk)


def do_end_user_sockets(user_id: Any) -> None:
    """Close every socket of the user (deactivated, or deleted), after commit."""
    events.send_session_ended(user_id)


def do_add_totp_device(username: str, name: str) -> Any:
    """Give a user a confirmed TOTP device (the admin's second factor) and return it."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = _get_active_user(username)
    # Confirmed at once: the operator hands the URL over in person, there is no enrolment step.
    return TOTPDevice.objects.create(user=user, name=name, confirmed=True)


def do_typing(user: User, room: Room) -> None:
    """Tell the room the user is typing. Nothing is stored."""
    events.send_typing(room.pk, room.slug, user.get_username())


# Re-exported: `from web.actions import do_provision_load` (the command, the benchmark).
from web.actions.load import LoadFixture as LoadFixture  # noqa: E402
from web.actions.load import do_provision_load as do_provision_load  # noqa: E402
