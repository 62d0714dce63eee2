"""Message.objects.store_batch returns real stored messages, however it builds them."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.models.signals import post_init, pre_init
from django.test.utils import CaptureQueriesContext

from web.models import Draft, Message, Room

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["one statement", "portable"])
def store_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test over PostgreSQL's one-statement store and the portable (SQLite) one."""
    if request.param == "portable":
        monkeypatch.setattr(connection, "vendor", "portable")
    return str(request.param)


def _store(room: Room, alice: Any) -> list[Message]:
    """A new message and a retry of a stored one, as store_batch returns them."""
    Message.objects.store_batch([Draft(room.pk, alice.pk, "before", "c-0")])
    stored = Message.objects.store_batch(
        [Draft(room.pk, alice.pk, "new", "c-1"), Draft(room.pk, alice.pk, "again", "c-0")]
    )
    assert [(s[1], s[0].body) for s in stored if isinstance(s, tuple)] == [
        (True, "new"),
        (False, "before"),
    ]
    return [s[0] for s in stored if isinstance(s, tuple)]


def _fields(message: Message) -> list[Any]:
    return [getattr(message, f.attname) for f in Message._meta.concrete_fields]


def test_it_returns_messages_equal_to_a_fresh_query(
    alice: Any, store_path: str, django_assert_num_queries: Any
) -> None:
    room = Room.objects.create(slug="den", title="Den")
    messages = _store(room, alice)
    fresh = [Message.objects.get(pk=m.pk) for m in messages]
    with django_assert_num_queries(0):  # every field is loaded: none is fetched on access
        assert [_fields(m) for m in messages] == [_fields(f) for f in fresh]
    assert messages == fresh
    assert all(m.get_deferred_fields() == set() for m in messages)
    assert [(m._state.adding, m._state.db) for m in messages] == [(False, "default")] * 2
    assert messages[0].to_event("den", "alice")["seq"] == fresh[0].seq == 2


def test_saving_a_returned_message_updates_it(alice: Any, store_path: str) -> None:
    room = Room.objects.create(slug="den", title="Den")
    message = _store(room, alice)[0]
    message.body = "edited"
    with CaptureQueriesContext(connection) as queries:
        message.save()
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]
    assert Message.objects.filter(room=room).count() == 2
    assert Message.objects.get(pk=message.pk).body == "edited"


def test_it_sends_the_init_signals_while_a_receiver_listens(alice: Any, store_path: str) -> None:
    room = Room.objects.create(slug="den", title="Den")
    senders: list[Any] = []
    initialized: list[Message] = []

    def on_pre_init(sender: Any, **kwargs: Any) -> None:
        senders.append(sender)

    def on_post_init(sender: Any, instance: Message, **kwargs: Any) -> None:
        initialized.append(instance)

    pre_init.connect(on_pre_init, sender=Message)
    post_init.connect(on_post_init, sender=Message)
    try:
        messages = _store(room, alice)
    finally:
        pre_init.disconnect(on_pre_init, sender=Message)
        post_init.disconnect(on_post_init, sender=Message)
    assert Message in senders
    assert all(any(m is i for i in initialized) for m in messages)
    assert [m.get_deferred_fields() for m in messages] == [set(), set()]
    assert [m._state.adding for m in messages] == [False, False]
