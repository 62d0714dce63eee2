"""Rooms, memberships and the durable message log; the other models are re-exported here."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, models, transaction
from django.db.models import Exists, OuterRef, Q
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init

from web.models.prepared import prepared_cursor
from web.models.store_statement import store_batch_sql

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from web.models.async_database import AsyncDatabase


class RoomManager(models.Manager["Room"]):
    def visible_to(self, user: User) -> models.QuerySet[Room]:
        """Public rooms and the private rooms the user belongs to."""
        member = Membership.objects.filter(room=OuterRef("pk"), user=user)
        return self.filter(Q(private=False) | Exists(member))

    def take_seqs(self, room_id: int, count: int) -> int:
        """Add `count` to the room's last_seq and return it; the row stays locked until commit."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {Room._meta.db_table} SET last_seq = last_seq + %s "  # noqa: S608 -- table name from the model
                "WHERE id = %s RETURNING last_seq",
                [count, room_id],
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

    # No separate index: the (user, room) unique constraint leads with user (docs/data.md).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="memberships",
        db_index=False,
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


STORE_ATTEMPTS = 10


class Refused:
    """What store_batch returns for a draft whose sender is no longer active."""


REFUSED = Refused()
Stored = tuple["Message", bool] | None | Refused


@dataclass(frozen=True, slots=True)
class Draft:
    """A message to store: where, who sends it, what, and the client's id for retries."""

    room_id: int
    sender_id: Any
    body: str
    client_msg_id: str

    @property
    def key(self) -> tuple[int, Any, str]:
        return (self.room_id, self.sender_id, self.client_msg_id)


Key = tuple[int, Any, str]  # (room id, sender id, client_msg_id)
Found = tuple["Message", bool]  # a stored message, and whether this call created it


def _unique(drafts: Sequence[Draft]) -> list[Draft]:
    """The first draft of each (room, sender, client_msg_id), in order."""
    firsts: dict[Key, Draft] = {}
    for d in drafts:
        firsts.setdefault(d.key, d)
    return list(firsts.values())


def _statement_params(drafts: list[Draft]) -> dict[str, list[Any]]:
    return {
        "rooms": [d.room_id for d in drafts],
        "senders": [d.sender_id for d in drafts],
        "bodies": [d.body for d in drafts],
        "ids": [d.client_msg_id for d in drafts],
    }


def _results(drafts: Sequence[Draft], stored: list[Found], refused: list[Key]) -> list[Stored]:
    """One result per draft, in order; a repeat of a draft earlier in the batch is a retry."""
    by_key: dict[Key, Stored] = {
        (m.room_id, m.sender_id, m.client_msg_id): (m, created) for m, created in stored
    }
    by_key.update((key, REFUSED) for key in refused)
    results: list[Stored] = []
    for d in drafts:
        found = by_key.get(d.key)
        results.append(found)
        if isinstance(found, tuple):
            by_key[d.key] = (found[0], False)
    return results


class MessageManager(models.Manager["Message"]):
    def store_batch(self, drafts: Sequence[Draft]) -> list[Stored]:
        """Store drafts (for any rooms) with their rooms' next seqs, in order.

        One (message, created) per draft: a draft whose (room, sender, client_msg_id) is
        stored already, or repeats one earlier in the batch, gets that message back with
        created=False and takes no seq. None for a draft whose room does not exist, and
        REFUSED for one whose sender is inactive (checked in the storing transaction, so
        nothing a deactivated user's socket still sends is stored).
        """
        if not drafts:
            return []
        unique = _unique(drafts)
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                # Outside a transaction the statement commits by itself; inside one (tests,
                # callers' atomic blocks) a savepoint keeps a lost race from poisoning it.
                scope = transaction.atomic() if connection.in_atomic_block else nullcontext()
                with scope:
                    if connection.vendor == "postgresql":
                        stored, refused = self._store_in_one_statement(unique)
                    else:
                        stored, refused = self._store_portably(unique)
                break
            except IntegrityError:
                # A concurrent retry of one of these drafts committed after this statement's
                # snapshot: nothing was stored and no seq taken. The next attempt sees it;
                # it fails again only if yet another such retry commits meanwhile.
                if attempt == STORE_ATTEMPTS:
                    raise
        return _results(drafts, stored, refused)

    async def astore_batch(self, drafts: Sequence[Draft], database: AsyncDatabase) -> list[Stored]:
        """store_batch on PostgreSQL, its statement awaited on the event loop through
        `database` (web/models/async_database.py) instead of run on this thread."""
        if not drafts:
            return []
        unique = _unique(drafts)
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                rows = await database.fetchall(store_batch_sql(), _statement_params(unique))
                break
            except IntegrityError:  # a concurrent retry committed: as in store_batch
                if attempt == STORE_ATTEMPTS:
                    raise
        return _results(drafts, *self._from_statement(DEFAULT_DB_ALIAS, rows))

    def _store_in_one_statement(self, drafts: list[Draft]) -> tuple[list[Found], list[Key]]:
        """One round trip, committed on its own: the rooms' row locks are held only for this
        statement and its commit, so publishes to one room follow each other closely."""
        with prepared_cursor() as cursor:  # parsed and planned once per connection
            cursor.execute(store_batch_sql(), _statement_params(drafts))
            rows = cursor.fetchall()
        return self._from_statement(connection.alias, rows)

    def _from_statement(
        self, db: str, rows: list[tuple[Any, ...]]
    ) -> tuple[list[Found], list[Key]]:
        """The statement's rows: the messages it stored or found, and the drafts it refused."""
        refused = [(r[1], r[3], r[5]) for r in rows if r[-1] is None]
        rows = [r for r in rows if r[-1] is not None]
        messages = self._from_rows(db, rows)
        return list(zip(messages, (r[-1] for r in rows), strict=True)), refused

    def _from_rows(self, db: str, rows: list[tuple[Any, ...]]) -> list[Message]:
        """Stored messages, as from_db makes them, from rows that begin with every concrete
        field in order (further columns are ignored).

        Per row, Message(**fields) cost 5.1 us and from_db 3.3 us, nearly all of it
        Model.__init__ and its pre_init/post_init sends; filling __dict__ as unpickling does
        costs 1.2 us (the publish path's conversion, measured without a database). That skips
        the signals, so it is taken only while no receiver listens for Message.
        """
        names = [f.attname for f in Message._meta.concrete_fields]
        if pre_init.has_listeners(Message) or post_init.has_listeners(Message):
            return [Message.from_db(db, names, row[: len(names)]) for row in rows]
        messages = []
        for row in rows:
            message = Message.__new__(Message)
            message.__dict__ = dict(zip(names, row, strict=False))
            message._state = state = ModelState()
            state.adding, state.db = False, db
            messages.append(message)
        return messages

    def _store_portably(self, drafts: list[Draft]) -> tuple[list[Found], list[Key]]:
        """The same with the ORM, for SQLite (`make run`): room by room, in id order."""
        from django.contrib.auth import get_user_model

        stored: list[Found] = []
        with transaction.atomic():
            senders = {d.sender_id for d in drafts}
            active = set(
                get_user_model()
                .objects.filter(pk__in=senders, is_active=True)
                .values_list("pk", flat=True)
            )
            refused = [d.key for d in drafts if d.sender_id not in active]
            drafts = [d for d in drafts if d.sender_id in active]
            for room_id in sorted({d.room_id for d in drafts}):
                in_room = [d for d in drafts if d.room_id == room_id]
                keys = {d.key for d in in_room}
                existing = {
                    (m.room_id, m.sender_id, m.client_msg_id): m
                    for m in self.filter(
                        room_id=room_id, client_msg_id__in=[d.client_msg_id for d in in_room]
                    )
                }
                stored += [(m, False) for key, m in existing.items() if key in keys]
                fresh = [d for d in in_room if d.key not in existing]
                if not fresh:
                    continue
                try:
                    last = Room.objects.take_seqs(room_id, len(fresh))
                except Room.DoesNotExist:
                    continue
                first = last - len(fresh) + 1
                created = self.bulk_create(
                    Message(
                        room_id=room_id,
                        seq=first + i,
                        sender_id=d.sender_id,
                        body=d.body,
                        client_msg_id=d.client_msg_id,
                    )
                    for i, d in enumerate(fresh)
                )
                stored += [(m, True) for m in created]
        return stored, refused

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


# The models of other subjects, each in its own module (imported here so Django finds them).
from web.models.notifications import Inbox as Inbox  # noqa: E402
from web.models.notifications import Notification as Notification  # noqa: E402
from web.models.services import IdempotencyKey as IdempotencyKey  # noqa: E402
from web.models.services import ServiceKey as ServiceKey  # noqa: E402
from web.models.tokens import TOKEN_PREFIX as TOKEN_PREFIX  # noqa: E402
from web.models.tokens import ApiToken as ApiToken  # noqa: E402
from web.models.tokens import hash_token as hash_token  # noqa: E402
from web.models.webhooks import Webhook as Webhook  # noqa: E402
from web.models.webhooks import WebhookDelivery as WebhookDelivery  # noqa: E402
