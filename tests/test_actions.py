"""Actions: validation, gap-free seqs, idempotent publishes and the events they emit."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from tests.conftest import CaptureEvents
from web import actions
from web.errors import BadRequest, Conflict, Forbidden, NotFound, TooLarge
from web.models import ApiToken, Membership, Message, Room


@pytest.fixture
def room(alice: Any) -> Room:
    return actions.do_create_room(alice, "den", "Alice's den", private=True)


def test_create_room_makes_the_creator_its_owner(room: Room, alice: Any) -> None:
    assert room.owner == alice
    assert Membership.objects.get(room=room, user=alice).role == "owner"


def test_it_rejects_a_taken_slug(room: Room, bob: Any) -> None:
    with pytest.raises(Conflict):
        actions.do_create_room(bob, "den", "Another den", private=False)


@pytest.mark.parametrize("slug", ["", "Den", "den!", "-den", "den-", "a" * 51, "dén"])
def test_it_rejects_an_invalid_slug(alice: Any, slug: str) -> None:
    with pytest.raises(BadRequest):
        actions.do_create_room(alice, slug, "title", private=False)
    assert not Room.objects.filter(slug=slug).exists()


def test_it_assigns_gap_free_seqs(room: Room, alice: Any) -> None:
    seqs = [actions.do_send_message(alice, room, f"m{i}", f"c{i}").message.seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    room.refresh_from_db()
    assert room.last_seq == 5


def test_it_stores_a_retried_publish_once(
    room: Room, alice: Any, capture_events: CaptureEvents
) -> None:
    with capture_events(1):
        first = actions.do_send_message(alice, room, "hello", "same-id")
        again = actions.do_send_message(alice, room, "hello again", "same-id")
    assert first.created
    assert not again.created
    assert again.message.seq == first.message.seq == 1
    assert again.message.body == "hello"
    assert Message.objects.filter(room=room).count() == 1


def test_the_same_client_msg_id_from_two_senders_is_two_messages(alice: Any, bob: Any) -> None:
    general = Room.objects.get(slug="general")
    a = actions.do_send_message(alice, general, "hi", "dup")
    b = actions.do_send_message(bob, general, "hi", "dup")
    assert (a.message.seq, b.message.seq) == (1, 2)


@pytest.mark.parametrize(
    ("body", "client_msg_id", "error"),
    [
        ("", "ok", BadRequest),
        ("   \n", "ok", BadRequest),
        ("x" * 4001, "ok", TooLarge),
        ("fine", "", BadRequest),
        ("fine", "has space", BadRequest),
        ("fine", "x" * 65, BadRequest),
    ],
)
def test_it_stores_nothing_for_bad_input(
    room: Room,
    alice: Any,
    capture_events: CaptureEvents,
    body: str,
    client_msg_id: str,
    error: type[Exception],
) -> None:
    with capture_events(0), pytest.raises(error):
        actions.do_send_message(alice, room, body, client_msg_id)
    room.refresh_from_db()
    assert room.last_seq == 0
    assert not Message.objects.exists()


def test_a_body_of_exactly_4000_characters_is_stored(room: Room, alice: Any) -> None:
    assert actions.do_send_message(alice, room, "x" * 4000, "max").created


def test_publishing_broadcasts_one_event_after_commit(
    room: Room, alice: Any, capture_events: CaptureEvents
) -> None:
    with capture_events(1) as captured:
        sent = actions.do_send_message(alice, room, "<b>hi</b>", "c1")
        # Nothing is broadcast before the transaction commits.
        assert captured == []
    [(group, event)] = captured
    assert group == f"room.{room.pk}"
    assert (event["type"], event["room_id"], event["seq"]) == ("chat.message", room.pk, 1)
    assert orjson.loads(event["text"]) == sent.frame


def test_publishing_to_a_public_room_joins_it(alice: Any) -> None:
    general = Room.objects.get(slug="general")
    actions.do_send_message(alice, general, "hi", "c1")
    assert Membership.objects.filter(room=general, user=alice).exists()


def test_only_the_owner_adds_members(room: Room, alice: Any, bob: Any, charlie: Any) -> None:
    with pytest.raises(Forbidden):
        actions.do_add_member(bob, room, "charlie")
    actions.do_add_member(alice, room, "bob")
    assert Membership.objects.filter(room=room, user=bob).exists()
    with pytest.raises(NotFound):
        actions.do_add_member(alice, room, "nobody")


def test_removing_a_member_revokes_their_sockets(
    room: Room, alice: Any, bob: Any, capture_events: CaptureEvents
) -> None:
    actions.do_add_member(alice, room, "bob")
    with capture_events(1) as captured:
        actions.do_remove_member(alice, room, "bob")
    assert not Membership.objects.filter(room=room, user=bob).exists()
    assert captured == [
        (f"user.{bob.pk}", {"type": "room.revoked", "room_id": room.pk, "room": "den"})
    ]
    with pytest.raises(NotFound):
        actions.do_remove_member(alice, room, "bob")
    with pytest.raises(BadRequest):
        actions.do_remove_member(alice, room, "alice")


def test_mark_read_only_moves_forward(room: Room, alice: Any) -> None:
    for i in range(3):
        actions.do_send_message(alice, room, "m", f"c{i}")
    room.refresh_from_db()
    assert actions.do_mark_read(alice, room, 2) == 2
    assert actions.do_mark_read(alice, room, 1) == 2
    assert actions.do_mark_read(alice, room, 99) == 3


def test_issue_token_stores_only_a_hash(alice: Any) -> None:
    raw = actions.do_issue_token("alice")
    token = ApiToken.objects.get(user=alice)
    assert raw.startswith("ct_")
    assert raw not in token.key_hash
    with pytest.raises(NotFound):
        actions.do_issue_token("nobody")
    actions.do_issue_token("newcomer", create=True)
    assert ApiToken.objects.filter(user__username="newcomer").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_publishers_get_distinct_gap_free_seqs() -> None:
    from django.contrib.auth import get_user_model

    users = [get_user_model().objects.create_user(f"writer{i}") for i in range(4)]
    room = Room.objects.create(slug="race", title="race")
    seqs: list[int] = []
    lock = threading.Lock()

    def publish(user: Any) -> None:
        try:
            for i in range(25):
                seq = actions.do_send_message(user, room, "m", f"{user.pk}-{i}").message.seq
                with lock:
                    seqs.append(seq)
        finally:
            connection.close()

    threads = [threading.Thread(target=publish, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(seqs) == list(range(1, 101))
    assert list(
        Message.objects.filter(room=room).order_by("seq").values_list("seq", flat=True)
    ) == (list(range(1, 101)))


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_over_the_same_rooms_keep_each_room_gap_free() -> None:
    # Batches naming the same rooms in opposite orders, from several connections at once:
    # the store locks rooms in id order and numbers from the locked row, and the senders
    # join the rooms in that order too (no deadlock between one's join and another's store).
    from django.contrib.auth import get_user_model

    # A new sender for every batch: each one joins its five rooms as it posts.
    senders = [
        [get_user_model().objects.create_user(f"batcher{n}-{i}") for i in range(12)]
        for n in range(4)
    ]
    rooms = [Room.objects.create(slug=f"multi-{n}", title="multi") for n in range(5)]
    failures: list[BaseException] = []

    def publish(users: list[Any], order: list[Room]) -> None:
        try:
            for user in users:
                batch = [actions.Outgoing(user, r, "m", f"{user.pk}-{r.pk}") for r in order]
                results = actions.do_send_messages(batch)
                assert all(isinstance(r, actions.SentMessage) for r in results), results
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=publish, args=(users, rooms if n % 2 else rooms[::-1]))
        for n, users in enumerate(senders)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    for room in rooms:
        seqs = list(Message.objects.filter(room=room).order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(1, 49)), (room.slug, seqs)
        room.refresh_from_db()
        assert room.last_seq == 48


def test_revoked_tokens_stop_authenticating(alice: Any) -> None:
    from asgiref.sync import async_to_sync

    raw = actions.do_issue_token("alice")
    assert async_to_sync(ApiToken.objects.auser_for)(raw) == alice
    assert actions.do_revoke_tokens(ApiToken.objects.filter(user=alice)) == 1
    assert async_to_sync(ApiToken.objects.auser_for)(raw) is None
    assert actions.do_revoke_tokens(ApiToken.objects.filter(user=alice)) == 0


@pytest.fixture(params=["one statement", "portable"])
def store_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test over PostgreSQL's one-statement store and the portable (SQLite) one."""
    if request.param == "portable":
        monkeypatch.setattr(connection, "vendor", "portable")
    return str(request.param)


def test_a_batch_is_stored_in_order_with_one_result_per_publish(
    room: Room, alice: Any, bob: Any, capture_events: CaptureEvents, store_path: str
) -> None:
    actions.do_add_member(alice, room, "bob")
    first = actions.do_send_message(alice, room, "before", "a-0")
    batch = [
        actions.Outgoing(alice, room, "one", "a-1"),
        actions.Outgoing(bob, room, "", "b-1"),  # refused: empty
        actions.Outgoing(bob, room, "two", "b-2"),
        actions.Outgoing(alice, room, "again", "a-0"),  # a retry of a stored message
        actions.Outgoing(bob, room, "two, repeated", "b-2"),  # repeats one in this batch
        actions.Outgoing(alice, room, "three", "a-3"),
    ]
    with capture_events(3):
        results = actions.do_send_messages(batch)
    assert isinstance(results[1], BadRequest)
    sent = [r for r in results if not isinstance(r, BadRequest)]
    assert all(isinstance(r, actions.SentMessage) for r in sent)
    summary = [(r.message.seq, r.message.body, r.created) for r in sent]  # type: ignore[union-attr]
    assert summary == [
        (2, "one", True),
        (3, "two", True),
        (first.message.seq, "before", False),
        (3, "two", False),
        (4, "three", True),
    ]
    assert list(Message.objects.filter(room=room).order_by("seq").values_list("seq", "body")) == [
        (1, "before"),
        (2, "one"),
        (3, "two"),
        (4, "three"),
    ]
    room.refresh_from_db()
    assert room.last_seq == 4


def test_a_batch_broadcasts_its_new_messages_in_seq_order(
    room: Room, alice: Any, capture_events: CaptureEvents
) -> None:
    with capture_events(3) as captured:
        actions.do_send_messages(
            [actions.Outgoing(alice, room, f"m{i}", f"c{i}") for i in range(3)]
        )
    assert [event["seq"] for _, event in captured] == [1, 2, 3]
    assert [orjson.loads(event["text"])["body"] for _, event in captured] == ["m0", "m1", "m2"]


@pytest.mark.django_db(transaction=True)  # outside a test's transaction, as in production
def test_a_batch_of_members_is_one_query_on_postgresql(
    room: Room, alice: Any, django_assert_num_queries: Any
) -> None:
    # Rooms from the access helper say the sender is a member; the batch then only stores.
    with django_assert_num_queries(1):
        actions.do_send_messages(
            [actions.Outgoing(alice, room, f"m{i}", f"c{i}", member=True) for i in range(50)]
        )
    assert Message.objects.filter(room=room).count() == 50


def test_publishing_in_a_public_room_joins_it(alice: Any, bob: Any, store_path: str) -> None:
    general = Room.objects.get(slug="general")
    actions.do_send_messages(
        [actions.Outgoing(alice, general, "hi", "a"), actions.Outgoing(bob, general, "yo", "b")]
    )
    members = Membership.objects.filter(room=general, user__in=[alice, bob])
    assert members.count() == 2


def test_a_batch_numbers_each_of_its_rooms_on_its_own(
    room: Room, alice: Any, capture_events: CaptureEvents, store_path: str
) -> None:
    general = Room.objects.get(slug="general")
    gone = Room(pk=room.pk + 1000, slug="gone", title="gone", private=True)
    batch = [
        actions.Outgoing(alice, room, "den 1", "a"),
        actions.Outgoing(alice, general, "general 1", "b"),
        actions.Outgoing(alice, gone, "lost", "c"),
        actions.Outgoing(alice, room, "den 2", "d"),
        actions.Outgoing(alice, general, "general 2", "e"),
    ]
    with capture_events(4) as captured:
        results = actions.do_send_messages(batch)
    assert isinstance(results[2], NotFound)
    sent = [r for r in results if isinstance(r, actions.SentMessage)]
    assert [(r.message.room_id, r.message.seq, r.message.body) for r in sent] == [
        (room.pk, 1, "den 1"),
        (general.pk, 1, "general 1"),
        (room.pk, 2, "den 2"),
        (general.pk, 2, "general 2"),
    ]
    assert [(e["room_id"], e["seq"]) for _, e in captured] == sorted(
        [(room.pk, 1), (room.pk, 2), (general.pk, 1), (general.pk, 2)]
    )
    assert not Message.objects.filter(room_id=gone.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_racing_batches_with_the_same_retries_store_each_message_once() -> None:
    # Four processes storing overlapping retries of one sender's publishes to two rooms, in
    # different room orders, at the same time: the loser of a race on the idempotency
    # constraint stores nothing and tries again, and the rooms' locks never deadlock.
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("retrier")
    rooms = [Room.objects.create(slug=f"retries-{i}", title="retries") for i in range(2)]
    results: list[list[tuple[int, int, str]]] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def store(offset: int) -> None:
        order = rooms if offset % 2 else rooms[::-1]
        try:
            start.wait(timeout=10)
            for i in range(0, 40, 4):
                batch = [
                    actions.Outgoing(user, room, "m", f"c{(i + offset + j) % 40}")
                    for room in order
                    for j in range(6)
                ]
                sent = actions.do_send_messages(batch)
                with lock:
                    results.append(
                        [(s.message.room_id, s.message.seq, s.message.client_msg_id) for s in sent]  # type: ignore[union-attr]
                    )
        finally:
            connection.close()

    threads = [threading.Thread(target=store, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    by_id: dict[tuple[int, str], int] = {}
    for room in rooms:
        stored = list(
            Message.objects.filter(room=room).order_by("seq").values_list("seq", "client_msg_id")
        )
        assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
        assert sorted(cmid for _, cmid in stored) == sorted({f"c{i}" for i in range(40)})
        by_id.update(((room.pk, cmid), seq) for seq, cmid in stored)
    # Every result, winner or retry, names the one stored message.
    assert all(by_id[room_id, cmid] == seq for batch in results for room_id, seq, cmid in batch)
    assert len(results) == 40


def test_it_stores_nothing_of_a_sender_deactivated_behind_its_back(
    room: Room, alice: Any, bob: Any, capture_events: CaptureEvents, store_path: str
) -> None:
    actions.do_add_member(alice, room, "bob")
    stored = actions.do_send_message(bob, room, "before", "b-0")
    # A socket still holds Bob as he was; the row says he is inactive now.
    get_user_model().objects.filter(pk=bob.pk).update(is_active=False)
    batch = [
        actions.Outgoing(bob, room, "after", "b-1"),
        actions.Outgoing(bob, room, "a retry", "b-0"),
        actions.Outgoing(alice, room, "still here", "a-1"),
    ]
    with capture_events(1):
        results = actions.do_send_messages(batch)
    assert [type(r) for r in results] == [Forbidden, Forbidden, actions.SentMessage]
    stored_rows = Message.objects.filter(room=room).order_by("seq").values_list("seq", "body")
    assert list(stored_rows) == [(stored.message.seq, "before"), (2, "still here")]


def test_it_leaves_the_room_objects_it_was_given_as_they_were(alice: Any, store_path: str) -> None:
    # A socket's checked rooms live on the event loop; the store runs on a pool thread.
    general = Room.objects.get(slug="general")
    before = dict(vars(general))
    actions.do_send_messages([actions.Outgoing(alice, general, "hi", "a")])
    assert vars(general) == before
