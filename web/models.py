"""Users' API tokens, rooms, memberships and the durable message log."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, models
from django.db.models import Exists, OuterRef, Q

if TYPE_CHECKING:
    from django.contrib.auth.models import User


TOKEN_PREFIX = "ct_"  # noqa: S105 -- a marker that makes leaked tokens greppable, not a secret


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenManager(models.Manager["ApiToken"]):
    def issue(self, user: User, name: str = "") -> tuple[ApiToken, str]:
        """Create a token and return it with its raw value, which is never stored."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = self.create(user=user, key_hash=hash_token(raw), name=name)
        return token, raw

    async def afor_raw(self, raw: str) -> ApiToken | None:
        """The live token (with its active user) for a raw value, or None."""
        return (
            await self.select_related("user")
            .filter(key_hash=hash_token(raw), revoked_at__isnull=True, user__is_active=True)
            .afirst()
        )

    async def auser_for(self, raw: str) -> Any | None:
        """The active user a raw token belongs to, or None."""
        token = await self.afor_raw(raw)
        return token.user if token else None


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100, blank=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenManager()

    def __str__(self) -> str:
        return f"token {self.pk} of user {self.user_id}"


class RoomManager(models.Manager["Room"]):
    def visible_to(self, user: User) -> models.QuerySet[Room]:
        """Public rooms and the private rooms the user belongs to."""
        member = Membership.objects.filter(room=OuterRef("pk"), user=user)
        return self.filter(Q(private=False) | Exists(member))

    def take_next_seq(self, room_id: int) -> int:
        """Increment the room's last_seq and return it; the row stays locked until commit."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {Room._meta.db_table} SET last_seq = last_seq + 1 "  # noqa: S608 -- table name from the model
                "WHERE id = %s RETURNING last_seq",
                [room_id],
            )
            row = cursor.fetchone()
        if row is None:
            raise Room.DoesNotExist(f"room {room_id} is gone")
        return int(row[0])


class Room(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    title = models.CharField(max_length=200)
    private = models.BooleanField(default=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The seq of the newest message. Incremented under the row lock inside the storing
    # transaction, so seqs are gap-free per room.
    last_seq = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RoomManager()

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        MEMBER = "member"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    last_read_seq = models.BigIntegerField(default=0)
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "room"], name="membership_user_room_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.room_id}"


class MessageManager(models.Manager["Message"]):
    def find_retry(self, room_id: int, sender_id: Any, client_msg_id: str) -> Message | None:
        return self.filter(
            room_id=room_id, sender_id=sender_id, client_msg_id=client_msg_id
        ).first()

    def page_after(self, room_id: int, after: int, limit: int) -> models.QuerySet[Message]:
        return (
            self.filter(room_id=room_id, seq__gt=after)
            .select_related("sender")
            .order_by("seq")[:limit]
        )

    def page_before(self, room_id: int, before: int, limit: int) -> models.QuerySet[Message]:
        return (
            self.filter(room_id=room_id, seq__lt=before)
            .select_related("sender")
            .order_by("-seq")[:limit]
        )


class Message(models.Model):
    # No separate index: the (room, seq) unique constraint leads with room.
    room = models.ForeignKey(
        Room, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    seq = models.BigIntegerField()
    sender = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    body = models.TextField()
    client_msg_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = MessageManager()

    class Meta:
        constraints = [
            # Also the index for every history and backfill query (room_id, seq range).
            models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq_uniq"),
            # Makes a retried publish idempotent.
            models.UniqueConstraint(
                fields=["room", "sender", "client_msg_id"], name="message_idempotency_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.room_id}#{self.seq}"

    def to_event(self, room_slug: str, sender_name: str) -> dict[str, Any]:
        """The `message` frame clients receive."""
        return {
            "type": "message",
            "room": room_slug,
            "seq": self.seq,
            "sender": sender_name,
            "body": self.body,
            "client_msg_id": self.client_msg_id,
            "ts": self.created_at.isoformat().replace("+00:00", "Z"),
        }
