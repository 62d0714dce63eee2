"""The cache's faults (web/cache.py): servers stopped, hung, refusing writes, and values that do
not unpickle. Reads answer from the database, and what was lost is made good."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.test import Client
from pytest_redis.config import get_config
from pytest_redis.executor import RedisExecutor

from cluster.procs import free_port
from tests.cache_servers import (
    MEMCACHED,
    RETRY,
    MemcachedServer,
    errors,
    listed,
    pid,
    unavailable,
    use_cache,
)
from web import actions, cache
from web.access import get_room_for_user
from web.models import Room

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def own_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings: Any
) -> Iterator[RedisExecutor]:
    """A Redis for one test, which stops or pauses it; CACHES points at it."""
    config = get_config(request)
    server = RedisExecutor(
        executable=config.exec,
        databases=4,
        redis_timeout=0,
        loglevel=config.loglevel,
        host="127.0.0.1",
        port=free_port(),
        startup_timeout=30,
        datadir=tmp_path_factory.mktemp("redis"),
    )
    server.start()
    use_cache(settings, f"redis://127.0.0.1:{server.port}/0")
    try:
        yield server
    finally:
        if server.running():
            os.kill(pid(server), signal.SIGCONT)
        server.stop()


@pytest.fixture
def den(alice: Any, bob: Any) -> Room:
    """Alice's private room, with Bob in it."""
    room = actions.do_create_room(alice, "den", "Den", private=True)
    actions.do_add_member(alice, room, "bob")
    return room


def test_with_redis_stopped_reads_come_from_the_database(
    own_redis: RedisExecutor, den: Room, alice: Any, bob: Any
) -> None:
    assert listed(bob)["den"] == (True, 0, 0)
    own_redis.stop()
    before = errors("get"), unavailable("rooms"), unavailable("room")
    assert listed(bob)["den"] == (True, 0, 0)
    assert get_room_for_user(bob, "den").slug == "den"
    assert errors("get") == before[0] + 1  # then the database alone, for CACHE_RETRY_SECONDS
    assert (unavailable("rooms"), unavailable("room")) == (before[1] + 1, before[2] + 1)
    actions.do_send_message(alice, den, "hello", "c1")  # its invalidation is lost: no error
    time.sleep(RETRY)
    assert listed(bob)["den"] == (True, 1, 1)  # the retry failed again: the database still
    own_redis.start()  # empty again
    time.sleep(RETRY)
    assert listed(bob)["den"] == (True, 1, 1)
    assert cache.read("rooms", ["rooms:x"], [cache.EPOCH]) is not None  # used again


def test_with_redis_hung_reads_still_answer_in_time(
    own_redis: RedisExecutor, den: Room, alice: Any, bob: Any
) -> None:
    assert listed(bob)["den"] == (True, 0, 0)
    os.kill(pid(own_redis), signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert listed(bob)["den"] == (True, 0, 0)  # waits CACHE_TIMEOUT_SECONDS (0.25) at most
        assert get_room_for_user(bob, "den").slug == "den"  # then not at all
        actions.do_send_message(alice, den, "hello", "c1")
        assert listed(bob)["den"] == (True, 1, 1)
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(pid(own_redis), signal.SIGCONT)


@contextlib.contextmanager
def refusing_writes(server: RedisExecutor) -> Iterator[None]:
    """A full Redis (maxmemory, noeviction): it refuses writes and still serves reads."""
    raw = redis.Redis(host="127.0.0.1", port=server.port)
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", "1")
    try:
        yield
    finally:
        raw.config_set("maxmemory", "0")
        raw.close()


@pytest.mark.parametrize("stored", ["in a transaction", "on the event loop"])
def test_an_invalidation_redis_refused_is_made_good_when_it_accepts_writes(
    stored: str, own_redis: RedisExecutor, den: Room, alice: Any, bob: Any
) -> None:
    """A full Redis refuses the bump but keeps serving the stale entry: the epoch bump, once
    writes go through, makes every entry from before a miss. The same for a batch stored on
    the event loop, whose bump is written from there (web/cache_bumps.py)."""
    for _ in range(2):  # the second read tags each room's last_seq with its version
        assert listed(bob)["den"] == (True, 0, 0)
    with refusing_writes(own_redis):
        before = errors("invalidate")
        if stored == "on the event loop":
            Room.objects.filter(pk=den.pk).update(last_seq=1)  # the store; its bump next
            async_to_sync(cache.achanged_last_seq)([den.pk])  # refused: no error raised
        else:
            actions.do_send_message(alice, den, "hello", "c1")  # the bump is refused
        assert errors("invalidate") == before + 1
    time.sleep(RETRY)
    assert listed(bob)["den"] == (True, 1, 1)


def test_with_memcached_stopped_reads_come_from_the_database(
    settings: Any, den: Room, alice: Any, bob: Any
) -> None:
    if MEMCACHED is None:
        pytest.skip("memcached is not installed (make services)")
    server = MemcachedServer(MEMCACHED)
    server.start()
    try:
        use_cache(settings, server.url)
        assert listed(bob)["den"] == (True, 0, 0)
        server.stop()
        before = errors("get"), unavailable("rooms")
        assert listed(bob)["den"] == (True, 0, 0)
        assert get_room_for_user(bob, "den").slug == "den"
        assert (errors("get"), unavailable("rooms")) == (before[0] + 1, before[1] + 1)
        actions.do_send_message(alice, den, "hello", "c1")
        time.sleep(RETRY)
        assert listed(bob)["den"] == (True, 1, 1)
    finally:
        server.stop()


def test_a_redis_value_that_does_not_unpickle_is_a_miss(
    own_redis: RedisExecutor, den: Room, bob: Any
) -> None:
    assert listed(bob)["den"] == (True, 0, 0)
    raw = redis.Redis(host="127.0.0.1", port=own_redis.port)
    raw.set(f"chat:1:rooms:{bob.pk}", b"\x80\x05garbage")
    raw.set(f"chat:1:{cache.user_version(bob.pk)}", b"\x80\x05garbage")
    raw.close()
    before = errors("decode")
    assert listed(bob)["den"] == (True, 0, 0)
    assert errors("decode") == before + 2
    assert listed(bob)["den"] == (True, 0, 0)


def test_a_logout_redis_could_not_forget_does_not_sign_in_again(
    own_redis: RedisExecutor, settings: Any, alice: Any
) -> None:
    """The session's cached copy outlives a DEL that Redis refused: tagged with the epoch,
    it is a miss once the epoch is bumped, and the database says the session is gone."""
    settings.SESSION_ENGINE = "web.sessions"
    browser = Client()
    browser.force_login(alice)
    assert browser.get("/api/me").status_code == 200  # the session is in the cache now
    cookie = browser.cookies[django_settings.SESSION_COOKIE_NAME].value
    raw = redis.Redis(host="127.0.0.1", port=own_redis.port)
    raw.acl_setuser("default", enabled=True, nopass=True, commands=["-del", "-unlink"])
    try:
        browser.post("/accounts/logout/")
    finally:
        raw.acl_setuser("default", enabled=True, nopass=True, commands=["+del", "+unlink"])
        raw.close()
    time.sleep(RETRY)
    again = Client()
    again.cookies[django_settings.SESSION_COOKIE_NAME] = cookie
    assert again.get("/api/me").status_code == 401
