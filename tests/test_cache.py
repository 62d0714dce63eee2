"""The cache for hot reads (web/cache.py): every change is seen by the next read, on each backend.

Each write path warms the answers it changes, makes the change through its action (committed:
transactional tests), then reads again: local memory, a throwaway Redis and a throwaway
memcached. Faults are in tests/test_cache_faults.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.db import connection, transaction
from django.test import Client

from realtime import publisher
from realtime.process import close_process, get_process
from tests.cache_servers import MEMCACHED, MemcachedServer, errors, listed, use_cache
from tests.settings_probe import settings_under
from web import actions, cache
from web.access import aget_room_for_user, get_room_for_user
from web.errors import Forbidden
from web.models import Room

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def memcached_server() -> Iterator[str]:
    """A throwaway memcached on a free port (Debian's memcached, `make services`)."""
    if MEMCACHED is None:
        pytest.skip("memcached is not installed (make services)")
    server = MemcachedServer(MEMCACHED)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(params=["locmem", "redis", "redis cluster", "memcached"])
def backend(request: pytest.FixtureRequest, settings: Any) -> str:
    if request.param == "redis":
        server = request.getfixturevalue("redis_proc")
        use_cache(settings, f"redis://{server.host}:{server.port}/3")
    elif request.param == "redis cluster":
        use_cache(settings, request.getfixturevalue("redis_cluster_url"))
    elif request.param == "memcached":
        use_cache(settings, request.getfixturevalue("memcached_server"))
    else:
        use_cache(settings, None)
    return str(request.param)


@pytest.fixture
def den(alice: Any, bob: Any) -> Room:
    """Alice's private room, with Bob in it."""
    room = actions.do_create_room(alice, "den", "Den", private=True)
    actions.do_add_member(alice, room, "bob")
    return room


# --- Every write path, followed by a read that must see it --------------------------------


def test_a_public_room_created_is_in_everyones_list(backend: str, alice: Any, bob: Any) -> None:
    assert "lobby" not in listed(bob)
    actions.do_create_room(alice, "lobby", "Lobby", private=False)
    assert listed(bob)["lobby"] == (False, 0, 0)
    assert get_room_for_user(bob, "lobby").slug == "lobby"


def test_a_private_room_created_is_in_its_owners_list_only(
    backend: str, alice: Any, bob: Any
) -> None:
    listed(alice), listed(bob)
    actions.do_create_room(alice, "den", "Den", private=True)
    assert listed(alice)["den"] == (True, 0, 0)
    assert "den" not in listed(bob)
    with pytest.raises(Forbidden):
        get_room_for_user(bob, "den")


def test_an_added_member_sees_the_room_at_once(backend: str, alice: Any, bob: Any) -> None:
    room = actions.do_create_room(alice, "den", "Den", private=True)
    assert "den" not in listed(bob)
    with pytest.raises(Forbidden):
        get_room_for_user(bob, "den")  # cached: Bob is not a member
    actions.do_add_member(alice, room, "bob")
    assert listed(bob)["den"] == (True, 0, 0)
    assert get_room_for_user(bob, "den").is_member  # type: ignore[attr-defined]


def test_a_removed_member_loses_the_room_at_once(backend: str, den: Room, bob: Any) -> None:
    assert "den" in listed(bob)
    get_room_for_user(bob, "den")
    actions.do_remove_member(den.owner, den, "bob")  # type: ignore[arg-type]
    assert "den" not in listed(bob)
    with pytest.raises(Forbidden):
        get_room_for_user(bob, "den")


def test_a_message_moves_last_seq_and_unread_for_every_member(
    backend: str, den: Room, alice: Any, bob: Any
) -> None:
    assert listed(bob)["den"] == (True, 0, 0)
    assert listed(alice)["den"] == (True, 0, 0)
    actions.do_send_message(alice, den, "hello", "c1")
    assert listed(bob)["den"] == (True, 1, 1)
    assert listed(alice)["den"] == (True, 1, 1)
    actions.do_send_message(alice, den, "again", "c2")
    assert listed(bob)["den"] == (True, 2, 2)


def test_a_message_stored_on_the_event_loop_moves_last_seq_too(
    backend: str, den: Room, alice: Any, bob: Any
) -> None:
    assert listed(bob)["den"] == (True, 0, 0)
    actions.do_send_message(alice, den, "hello", "c1")
    assert listed(bob)["den"] == (True, 1, 1)  # cached, tagged with the room's version

    async def publish() -> list[Any]:
        # Alice is in her room: a batch of one statement, awaited on the event loop
        # (web/models/async_database.py), and the cache written from there.
        await close_process()
        room = await aget_room_for_user(alice, "den")
        await publisher.publish(actions.Outgoing(alice, room, "again", "c2", member=True))
        threads = list(get_process().publisher.threads.threads)
        await close_process()
        return threads

    assert async_to_sync(publish)() == []  # no store thread ran it
    assert listed(bob)["den"] == (True, 2, 2)


@pytest.mark.parametrize("backend", ["redis", "redis cluster"], indirect=True)
def test_a_bump_from_the_event_loop_does_not_wait_for_a_thread(
    backend: str, den: Room, bob: Any
) -> None:
    """On Redis the loop writes the bump itself (web/cache_bumps.py): a batch stored there is
    not held up behind the loop's threads (busy, or waiting for the GIL under load)."""
    for _ in range(2):  # the second read tags each room's last_seq with its version
        assert listed(bob)["den"] == (True, 0, 0)
    Room.objects.filter(pk=den.pk).update(last_seq=1)  # a store whose bump is still to come
    assert listed(bob)["den"] == (True, 0, 0)
    busy = threading.Event()

    async def bump_while_every_thread_is_busy() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        held = loop.run_in_executor(None, busy.wait, 30)
        try:
            await asyncio.wait_for(cache.achanged_last_seq([den.pk]), timeout=5)
        finally:
            busy.set()
            await held

    async_to_sync(bump_while_every_thread_is_busy)()
    assert listed(bob)["den"] == (True, 1, 1)


def test_a_read_marker_moved_shows_in_the_list(
    backend: str, den: Room, alice: Any, bob: Any
) -> None:
    actions.do_send_message(alice, den, "hello", "c1")
    assert listed(bob)["den"] == (True, 1, 1)
    actions.do_read(bob, den, 1)
    assert listed(bob)["den"] == (True, 1, 0)


def test_posting_in_a_public_room_joins_it(backend: str, general: Room, charlie: Any) -> None:
    assert listed(charlie)["general"] == (False, 0, 0)
    assert not get_room_for_user(charlie, "general").is_member  # type: ignore[attr-defined]
    actions.do_send_message(charlie, general, "hi all", "c1")
    assert listed(charlie)["general"] == (True, 1, 1)
    assert get_room_for_user(charlie, "general").is_member  # type: ignore[attr-defined]


def test_reading_a_public_room_joins_it(backend: str, general: Room, charlie: Any) -> None:
    assert listed(charlie)["general"] == (False, 0, 0)
    get_room_for_user(charlie, "general")
    actions.do_read(charlie, general, 0)
    assert listed(charlie)["general"] == (True, 0, 0)
    assert get_room_for_user(charlie, "general").is_member  # type: ignore[attr-defined]


def test_rooms_made_in_bulk_are_in_the_list(backend: str, bob: Any) -> None:
    listed(bob)
    actions.do_provision_load("load", users=2, rooms=3)
    assert {"load-0", "load-1", "load-2"} <= set(listed(bob))


def test_a_deactivated_user_is_refused_though_their_list_and_session_were_cached(
    backend: str, settings: Any, den: Room, bob: Any
) -> None:
    """Nothing cached says who may sign in: the user row is read on every request."""
    settings.SESSION_ENGINE = "web.sessions"
    script = Client(headers={"authorization": f"Bearer {actions.do_issue_token('bob')}"})
    browser = Client()
    browser.force_login(bob)
    for client in (script, browser):
        assert client.get("/api/rooms").status_code == 200
    actions.do_deactivate_user(bob)
    for client in (script, browser):
        assert client.get("/api/rooms").status_code == 401


def test_a_slug_used_again_names_the_new_room(backend: str, alice: Any, bob: Any) -> None:
    """A room deleted behind the actions' back (a shell) and made again under its slug."""
    old = actions.do_create_room(alice, "den", "Den", private=False)
    assert get_room_for_user(bob, "den").pk == old.pk
    Room.objects.filter(pk=old.pk).delete()
    new = actions.do_create_room(alice, "den", "Den again", private=True)
    with pytest.raises(Forbidden):
        get_room_for_user(bob, "den")
    assert get_room_for_user(alice, "den").pk == new.pk


@pytest.mark.django_db(transaction=False)
def test_inside_a_transaction_reads_see_its_own_writes(backend: str, den: Room, bob: Any) -> None:
    with transaction.atomic():
        assert listed(bob)["den"] == (True, 0, 0)
        actions.do_send_message(den.owner, den, "hello", "c1")  # type: ignore[arg-type]
        assert listed(bob)["den"] == (True, 1, 1)
        actions.do_read(bob, den, 1)
        assert listed(bob)["den"] == (True, 1, 0)


def test_a_reader_during_the_transaction_does_not_keep_the_old_answer(
    backend: str, alice: Any, bob: Any
) -> None:
    """Bob's list is read (and cached) by another connection while the room is created but not
    committed: the bump after commit makes that entry stale."""
    listed(bob)
    seen: list[set[str]] = []

    def read_elsewhere() -> None:
        try:
            seen.append(set(listed(bob)))
        finally:
            connection.close()

    with transaction.atomic():
        actions.do_create_room(alice, "lobby", "Lobby", private=False)
        reader = threading.Thread(target=read_elsewhere)
        reader.start()
        reader.join(timeout=10)
    assert len(seen) == 1
    assert "lobby" not in seen[0]  # it could not see the room yet
    assert "lobby" in listed(bob)


# --- Queries: a constant number, whatever the list's length --------------------------------


@pytest.mark.parametrize("rooms", [1, 30])
def test_the_room_list_takes_one_query_at_most_whatever_its_length(
    backend: str, rooms: int, alice: Any, bob: Any, django_assert_num_queries: Any
) -> None:
    made = [actions.do_create_room(alice, f"r{i}", "R", private=False) for i in range(rooms)]
    joined = actions.do_create_room(alice, "joined", "Joined", private=False)
    with django_assert_num_queries(1):
        listed(bob)
    with django_assert_num_queries(1):  # a list cached cold: its rooms' last_seqs, once
        listed(bob)
    with django_assert_num_queries(0):
        listed(bob)
    actions.do_send_message(alice, made[0], "hi", "c1")
    with django_assert_num_queries(1):  # the last_seq of the room that moved
        assert listed(bob)["r0"] == (False, 1, 0)
    actions.do_send_message(bob, joined, "hi", "c2")  # joins it, and moves its last_seq
    with django_assert_num_queries(1):  # the whole list again
        assert listed(bob)["joined"] == (True, 1, 1)
    with django_assert_num_queries(0):
        listed(bob)


@pytest.mark.parametrize("rooms", [1, 30])
def test_without_a_cache_the_room_list_is_one_query(
    settings: Any, rooms: int, alice: Any, bob: Any, django_assert_num_queries: Any
) -> None:
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    for i in range(rooms):
        actions.do_create_room(alice, f"r{i}", "R", private=False)
    for _ in range(2):
        with django_assert_num_queries(1):
            assert len(listed(bob)) == rooms


def test_a_room_check_is_one_query_then_none(
    backend: str, den: Room, bob: Any, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(1):
        get_room_for_user(bob, "den")
    with django_assert_num_queries(0):
        room = get_room_for_user(bob, "den")
    assert (room.pk, room.slug, room.private, room.owner_id) == (
        den.pk,
        "den",
        True,
        den.owner_id,
    )


def test_an_entry_that_does_not_decode_is_a_miss(backend: str, den: Room, bob: Any) -> None:
    assert listed(bob)["den"] == (True, 0, 0)
    get_room_for_user(bob, "den")
    store = caches["default"]
    store.set(f"rooms:{bob.pk}", b"not json")
    store.set("room:den", "not even bytes")
    before = errors("decode")
    assert listed(bob)["den"] == (True, 0, 0)
    assert get_room_for_user(bob, "den").slug == "den"
    assert errors("decode") == before + 2
    assert listed(bob)["den"] == (True, 0, 0)  # written again, and read
    assert errors("decode") == before + 2


# --- Settings ---------------------------------------------------------------------------


def test_cache_url_picks_the_backend_and_sessions_follow(tmp_path: Path) -> None:
    redis_cache, cluster, memcache, alone, several, bad = settings_under(
        {"CACHE_URL": "redis://cache.example:6379/1"},
        {"CACHE_URL": "redis+cluster://c1.example:7000,c2.example:7000?password=x"},
        {"CACHE_URL": "memcache://cache.example:11211"},
        {},
        {"REDIS_URL": "redis://layer.example:6379/0"},
        {"CACHE_URL": "ftp://cache.example"},
        tmp_path=tmp_path,
    )
    assert redis_cache["CACHES"]["default"]["BACKEND"].endswith("redis.RedisCache")
    assert redis_cache["CACHES"]["default"]["LOCATION"] == "redis://cache.example:6379/1"
    assert (
        redis_cache["SESSION_ENGINE"] == "web.sessions"
    )  # Django's cached_db, web/cache.py's client
    assert cluster["CACHES"]["default"]["BACKEND"] == "web.cluster_cache.RedisClusterCache"
    assert cluster["SESSION_ENGINE"] == "web.sessions"
    assert memcache["CACHES"]["default"]["BACKEND"].endswith("memcached.PyMemcacheCache")
    assert memcache["CACHES"]["default"]["LOCATION"] == "cache.example:11211"
    assert memcache["SESSION_ENGINE"] == "web.sessions"
    assert alone["CACHES"]["default"]["BACKEND"].endswith("locmem.LocMemCache")
    assert alone["SESSION_ENGINE"] is None  # Django's default: the database
    # Several processes and no shared cache: no cache rather than one per process.
    assert several["CACHES"]["default"]["BACKEND"].endswith("dummy.DummyCache")
    assert bad["error"].startswith("ImproperlyConfigured: CACHE_URL")


def test_a_session_survives_losing_its_cache_entry(backend: str, settings: Any, alice: Any) -> None:
    """cached_db: the database keeps the session when the cache forgets it (or is flushed)."""
    settings.SESSION_ENGINE = "web.sessions"
    client = Client()
    client.force_login(alice)
    assert client.get("/api/me").status_code == 200
    caches[django_settings.SESSION_CACHE_ALIAS].clear()
    assert client.get("/api/me").status_code == 200
    assert get_user_model().objects.filter(pk=alice.pk).exists()
