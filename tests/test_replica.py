"""Read-replica routing against a real streaming replica of the test run's PostgreSQL.

History pages and uncached room lists read the replica; a client's own history right after
its ack, and cached lists, come from the primary; a stopped replica falls back to the primary.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.db.backends.signals import connection_created
from django.test import Client
from prometheus_client import REGISTRY

from project import db_router
from tests.replica_server import Replica
from tests.settings_probe import settings_under
from web import actions, cache

# Each test with the replica commits (the replica sees only what is committed).
replica_db = pytest.mark.django_db(transaction=True, databases="__all__")


def test_settings_add_the_replica_only_when_its_url_is_set(tmp_path: Path) -> None:
    url_file = tmp_path / "replica_url"
    url_file.write_text("postgres://reader@replica.internal:5433/chat\n")
    primary = {"DATABASE_URL": "postgres://app@primary.internal/chat", "DATABASE_PASSWORD": "pw"}
    without, with_file = settings_under(
        primary, {**primary, "DATABASE_REPLICA_URL_FILE": str(url_file)}, tmp_path=tmp_path
    )
    assert set(without["DATABASES"]) == {"default"}
    replica = with_file["DATABASES"]["replica"]
    assert (replica["HOST"], replica["PORT"], replica["USER"]) == (
        "replica.internal",
        5433,
        "reader",
    )
    assert replica["PASSWORD"] == "pw"  # DATABASE_PASSWORD, when its URL has none
    assert replica["OPTIONS"] == with_file["DATABASES"]["default"]["OPTIONS"]  # the same pool
    assert replica["TEST"]["MIRROR"] == "default"


@pytest.fixture(scope="module")
def replica(
    django_db_setup: None,
    django_db_blocker: Any,
    postgresql_proc: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replica]:
    """A hot standby of the test database's server, known to Django as `replica`."""
    server = Replica(
        postgresql_proc.host,
        int(postgresql_proc.port),
        postgresql_proc.user,
        Path(tmp_path_factory.mktemp("replica")),
    )
    server.create()
    server.start()
    with django_db_blocker.unblock():
        primary = connections["default"].settings_dict
    alias = copy.deepcopy(primary)
    alias.update(HOST=server.host, PORT=str(server.port))
    alias["TEST"] = {**alias.get("TEST", {}), "MIRROR": "default"}  # never flushed nor created
    # connections.settings is settings.DATABASES once Django has filled in its defaults.
    settings.DATABASES[db_router.REPLICA] = alias
    connections.settings[db_router.REPLICA] = alias
    try:
        yield server
    finally:
        connections[db_router.REPLICA].close()
        connections.settings.pop(db_router.REPLICA, None)
        settings.DATABASES.pop(db_router.REPLICA, None)
        server.stop()


@pytest.fixture
def standby(replica: Replica) -> Iterator[Replica]:
    """The replica, replaying, with the breaker closed."""
    replica.resume()
    db_router.breaker.reset()
    yield replica
    db_router.breaker.reset()


@pytest.fixture
def replica_queries(standby: Replica) -> Iterator[list[str]]:
    """The SQL of every query sent to the replica during the test."""
    seen: list[str] = []

    def record(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        seen.append(sql)
        return execute(sql, *args)

    def attach(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == db_router.REPLICA:
            connection.execute_wrappers.append(record)

    connections[db_router.REPLICA].close()  # so the next one is made, and recorded
    connection_created.connect(attach)
    yield seen
    connection_created.disconnect(attach)
    connections[db_router.REPLICA].close()


@pytest.fixture
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache off, as with REDIS_URL and no CACHE_URL: lists read the database each time."""
    monkeypatch.setattr(cache._state, "backend", None)
    monkeypatch.setattr(cache._state, "resolved", True)


def fallbacks(reason: str) -> float:
    return REGISTRY.get_sample_value("chat_db_replica_fallbacks_total", {"reason": reason}) or 0.0


def auth(username: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {actions.do_issue_token(username)}"}


def send(client: Client, headers: dict[str, str], slug: str, body: str) -> dict[str, Any]:
    response = client.post(
        f"/api/rooms/{slug}/messages",
        {"body": body, "client_msg_id": body},
        content_type="application/json",
        **headers,  # type: ignore[arg-type]  # Client takes WSGI headers as keywords
    )
    assert response.status_code == 201, response.content
    return dict(response.json())


def get(client: Client, headers: dict[str, str], path: str) -> Any:
    response = client.get(path, **headers)  # type: ignore[arg-type]  # as above
    assert response.status_code == 200, response.content
    return response.json()


def last_seqs(client: Client, headers: dict[str, str]) -> dict[str, int]:
    return {room["slug"]: room["last_seq"] for room in get(client, headers, "/api/rooms")["rooms"]}


@pytest.mark.e2e
@replica_db
def test_history_pages_and_uncached_lists_read_the_replica(
    standby: Replica, alice: Any, no_cache: None, replica_queries: list[str]
) -> None:
    client, headers = Client(), auth("alice")
    actions.do_create_room(alice, "attic", "Attic", private=False)
    for n in range(3):
        send(client, headers, "attic", f"m{n}")
    standby.catch_up()

    page = get(client, headers, "/api/rooms/attic/messages?after=0&limit=2")
    assert [m["seq"] for m in page["messages"]] == [1, 2]
    assert any("web_message" in sql for sql in replica_queries)
    assert last_seqs(client, headers)["attic"] == 3
    assert any("web_room" in sql for sql in replica_queries)

    # With replay paused the replica still answers the list as it was: it is the one asked.
    standby.pause()
    send(client, headers, "attic", "m3")
    assert last_seqs(client, headers)["attic"] == 3


@pytest.mark.e2e
@replica_db
def test_own_history_right_after_the_ack_comes_from_the_primary(
    standby: Replica, alice: Any
) -> None:
    client, headers = Client(), auth("alice")
    actions.do_create_room(alice, "attic", "Attic", private=False)
    send(client, headers, "attic", "old")
    standby.catch_up()
    standby.pause()
    behind = fallbacks("behind")

    acked = send(client, headers, "attic", "new")
    newest = get(client, headers, "/api/rooms/attic/messages")["messages"]
    assert [m["seq"] for m in newest] == [1, acked["seq"]]
    resumed = get(client, headers, f"/api/rooms/attic/messages?after={acked['seq'] - 1}")
    assert [m["body"] for m in resumed["messages"]] == ["new"]
    assert fallbacks("behind") == behind + 2
    # The replica really is behind: its copy has not the message yet.
    assert standby.sql("SELECT count(*) FROM web_message", dbname=settings_name()) == 1


@pytest.mark.e2e
@replica_db
def test_a_cached_list_is_filled_from_the_primary(standby: Replica, alice: Any) -> None:
    client, headers = Client(), auth("alice")
    actions.do_create_room(alice, "attic", "Attic", private=False)
    send(client, headers, "attic", "one")
    standby.catch_up()
    assert last_seqs(client, headers)["attic"] == 1  # cached
    standby.pause()
    send(client, headers, "attic", "two")
    assert last_seqs(client, headers)["attic"] == 2
    standby.resume()
    assert last_seqs(client, headers)["attic"] == 2


@pytest.mark.e2e
@replica_db
def test_a_stopped_replica_falls_back_to_the_primary(
    standby: Replica, alice: Any, no_cache: None
) -> None:
    client, headers = Client(), auth("alice")
    actions.do_create_room(alice, "attic", "Attic", private=False)
    send(client, headers, "attic", "one")
    standby.catch_up()
    get(client, headers, "/api/rooms")  # the replica's connection is open
    errors, skipped = fallbacks("error"), fallbacks("open")
    standby.stop()
    try:
        send(client, headers, "attic", "two")
        page = get(client, headers, "/api/rooms/attic/messages")
        assert [m["body"] for m in page["messages"]] == ["one", "two"]
        assert last_seqs(client, headers)["attic"] == 2
        assert fallbacks("error") == errors + 1
        assert fallbacks("open") == skipped + 1  # the list did not try it again
    finally:
        standby.start()


def settings_name() -> str:
    return str(connections["default"].settings_dict["NAME"])


@pytest.fixture
def pooled(standby: Replica) -> Iterator[None]:
    """The replica's connections from psycopg's pool, as in production."""
    options = connections[db_router.REPLICA].settings_dict["OPTIONS"]
    connections[db_router.REPLICA].close()
    options["pool"] = {"min_size": 1, "max_size": 2, "timeout": 2.0}
    yield
    wrapper: Any = connections[db_router.REPLICA]  # PostgreSQL's wrapper: close_pool, pool
    wrapper.close_pool()
    del options["pool"]


@pytest.mark.e2e
@replica_db
def test_with_the_pool_a_read_hands_the_replica_connection_back(
    standby: Replica, alice: Any, no_cache: None, pooled: None
) -> None:
    client, headers = Client(), auth("alice")
    actions.do_create_room(alice, "attic", "Attic", private=False)
    send(client, headers, "attic", "one")
    standby.catch_up()
    replica: Any = connections[db_router.REPLICA]  # PostgreSQL's wrapper, with .pool
    assert last_seqs(client, headers)["attic"] == 1
    assert replica.pool is not None
    assert replica.connection is None  # back in the pool while the response is written
    assert replica.pool.get_stats()["requests_num"] >= 1  # it was taken from the pool
    errors = fallbacks("error")
    standby.stop()
    try:
        page = get(client, headers, "/api/rooms/attic/messages")
        assert [m["body"] for m in page["messages"]] == ["one"]
        assert fallbacks("error") == errors + 1
    finally:
        standby.start()
