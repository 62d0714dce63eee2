"""Property-based fuzzing of the HTTP API: whatever the method, path, query, body, content type or
credentials, the answer is never a 5xx, and every 4xx is JSON with an `error` object.

There is no outage here, so a 503 `unavailable` would mean an input reached the database that it
could not store: a client told to retry would retry for ever. That counts as a failure too.
Each example runs inside a savepoint that is rolled back, so examples do not see each other's rooms.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_from_bytes, urlencode

import pytest
from django.db import DataError, transaction
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import json_values
from web import actions
from web.models import Room

# Function-scoped fixtures (users, rooms, clients) are built once per test and shared by its
# examples on purpose: each example's own writes are rolled back.
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
AUTH_MODES = ["token", "bad_token", "session", "session_csrf", "anonymous"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
FIELDS = ["slug", "title", "private", "username", "body", "client_msg_id", "seq"]
CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=fuzz",
    "multipart/form-data",
    "",
]


@dataclass
class World:
    clients: dict[str, tuple[Client, dict[str, Any]]]


@pytest.fixture
def world(alice: Any, bob: Any, charlie: Any) -> World:
    """Alice's public room with history, her private room with Bob, and a client per auth mode."""
    general = Room.objects.get(slug="general")  # made by a data migration
    for i in range(3):
        actions.do_send_message(alice, general, f"hello {i}", f"m{i}")
    den = actions.do_create_room(alice, "den", "Alice's den", private=True)
    actions.do_add_member(alice, den, "bob")
    token = actions.do_issue_token("alice")

    session = Client(enforce_csrf_checks=True)
    session.force_login(alice)
    session_csrf = Client(enforce_csrf_checks=True)
    session_csrf.force_login(alice)
    session_csrf.get("/api/me")  # sets the CSRF cookie
    csrf = session_csrf.cookies["csrftoken"].value
    return World(
        {
            "token": (Client(), {"HTTP_AUTHORIZATION": f"Bearer {token}"}),
            "bad_token": (Client(), {"HTTP_AUTHORIZATION": "Bearer ct_not-a-token"}),
            "session": (session, {}),
            "session_csrf": (session_csrf, {"HTTP_X_CSRFTOKEN": csrf}),
            "anonymous": (Client(enforce_csrf_checks=True), {}),
        }
    )


def request(
    world: World, auth: str, method: str, path: str, body: bytes = b"", content_type: str = ""
) -> Any:
    client, headers = world.clients[auth]
    with transaction.atomic():
        response = client.generic(method, path, body, content_type=content_type, **headers)
        transaction.set_rollback(True)
    check(response, method)
    return response


def check(response: Any, method: str) -> None:
    status = response.status_code
    assert status < 500, (status, response.content[:500])
    assert 200 <= status < 300 or 400 <= status < 500, status
    if status == 204:
        assert response.content == b""
        return
    assert response["Content-Type"] == "application/json", (status, response.content[:300])
    assert response["X-Content-Type-Options"] == "nosniff"
    if method == "HEAD":
        return  # no body to look at
    data = json.loads(response.content)
    if status >= 400:
        assert isinstance(data, dict), data
        assert set(data) == {"error"}, data
        assert isinstance(data["error"]["code"], str), data
        assert isinstance(data["error"]["message"], str), data


# Strings with NUL and other control characters, markup, bidi overrides and astral characters,
# and the names that exist, so the checks behind the JSON parse all get exercised.
tricky_text = st.text(
    alphabet=st.sampled_from("\x00\x01\x1f\x7f\t\n -_.:aZ09<>&\"'\\/%\u2028\u202e\U0001f600"),
    max_size=20,
)
tricky_values = st.sampled_from(
    ["", " ", "\x00", "general", "den", "bob", "m1", "<script>alert(1)</script>", "x" * 4001]
)
field_values = (
    json_values | tricky_text | tricky_values | st.from_regex(r"[a-z0-9-]{1,50}", fullmatch=True)
)
# Objects with the API's field names (and others), for every endpoint.
api_objects = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=6), field_values, max_size=6
)
json_bodies = (json_values | api_objects).map(lambda v: json.dumps(v).encode())
bodies = json_bodies | st.binary(max_size=300) | st.text(max_size=300).map(str.encode)

# Path segments, percent-encoded as a client would send them (invalid UTF-8 included).
slugs = (
    st.sampled_from(["general", "den", "nope"])
    | st.from_regex(r"[-a-zA-Z0-9_]{1,60}", fullmatch=True)
    | st.text(max_size=20).map(lambda s: quote(s, safe=""))
    | st.binary(max_size=20).map(lambda b: quote_from_bytes(b, safe=""))
)
usernames = (
    st.sampled_from(["alice", "bob", "charlie", "root"])
    | slugs
    | tricky_text.map(lambda s: quote(s, safe=""))
)
paths = st.one_of(
    st.just("/api/me"),
    st.just("/api/rooms"),
    st.builds("/api/rooms/{}/members".format, slugs),
    st.builds("/api/rooms/{}/members/{}".format, slugs, usernames),
    st.builds("/api/rooms/{}/messages".format, slugs),
    st.builds("/api/rooms/{}/read".format, slugs),
    st.builds("/api/{}".format, slugs),
)
# The endpoints that read a body, in rooms where Alice may write (den is hers), and any other.
write_paths = (
    st.sampled_from(
        [
            "/api/rooms",
            "/api/rooms/general/messages",
            "/api/rooms/den/messages",
            "/api/rooms/general/read",
            "/api/rooms/den/members",
        ]
    )
    | paths
)
# Well-formed requests to each writing endpoint, with any value in each field.
shaped_writes = st.one_of(
    st.tuples(
        st.just("/api/rooms"),
        st.fixed_dictionaries(
            {"slug": field_values}, optional={"title": field_values, "private": field_values}
        ),
    ),
    st.tuples(
        st.sampled_from(["/api/rooms/general/messages", "/api/rooms/den/messages"]),
        st.fixed_dictionaries({"body": field_values, "client_msg_id": field_values}),
    ),
    st.tuples(st.just("/api/rooms/den/members"), st.fixed_dictionaries({"username": field_values})),
    st.tuples(st.just("/api/rooms/general/read"), st.fixed_dictionaries({"seq": field_values})),
)
methods = st.sampled_from(METHODS) | st.text(string.ascii_uppercase, min_size=1, max_size=10)
auths = st.sampled_from(AUTH_MODES)
writers = st.sampled_from(["token", "session_csrf"])


@FUZZ
@given(
    auths,
    st.sampled_from(["POST", "DELETE", "PUT"]),
    write_paths,
    bodies,
    st.sampled_from(CONTENT_TYPES),
)
def test_arbitrary_bodies_never_fail_the_server(
    world: World, auth: str, method: str, path: str, body: bytes, content_type: str
) -> None:
    request(world, auth, method, path, body, content_type)


@FUZZ
@given(writers, st.sampled_from(["POST", "DELETE"]), shaped_writes)
def test_arbitrary_field_values_never_fail_the_server(
    world: World, auth: str, method: str, write: tuple[str, dict[str, Any]]
) -> None:
    path, data = write
    request(world, auth, method, path, json.dumps(data).encode(), "application/json")


@FUZZ
@given(writers, st.sampled_from(["POST", "DELETE"]), usernames)
def test_arbitrary_usernames_in_member_paths_never_fail_the_server(
    world: World, auth: str, method: str, username: str
) -> None:
    request(world, auth, method, f"/api/rooms/den/members/{username}")


paging_values = (
    st.integers(min_value=-(2**70), max_value=2**70).map(str)
    | st.from_regex(r"\s*[-+]?[0-9_]{0,25}\s*", fullmatch=True)
    | st.text(max_size=20)
)
paging = st.dictionaries(st.sampled_from(["after", "before", "limit"]), paging_values, max_size=3)
raw_queries = st.binary(max_size=80).map(lambda b: quote_from_bytes(b, safe="=&;+"))


@FUZZ
@given(auths, st.sampled_from(["general", "den", "nope"]), paging | raw_queries)
def test_arbitrary_history_queries_never_fail_the_server(
    world: World, auth: str, slug: str, query: dict[str, str] | str
) -> None:
    encoded = query if isinstance(query, str) else urlencode(query)
    response = request(world, auth, "GET", f"/api/rooms/{slug}/messages?{encoded}")
    if response.status_code == 200:
        page = response.json()["messages"]
        assert len(page) <= 200
        assert [m["seq"] for m in page] == sorted(m["seq"] for m in page)


@FUZZ
@given(auths, methods, paths)
def test_arbitrary_methods_and_paths_never_fail_the_server(
    world: World, auth: str, method: str, path: str
) -> None:
    request(world, auth, method, path)


@FUZZ
@given(st.text(max_size=100), st.sampled_from(["GET", "POST"]), paths)
def test_arbitrary_authorization_headers_never_fail_the_server(
    world: World, header: str, method: str, path: str
) -> None:
    client = Client(enforce_csrf_checks=True)
    with transaction.atomic():
        response = client.generic(
            method, path, b"{}", "application/json", HTTP_AUTHORIZATION=header
        )
        transaction.set_rollback(True)
    check(response, method)
    if header.partition(" ")[0].lower() == "bearer":
        # A bad token is refused as such, never passed on to the session or CSRF checks.
        assert response.status_code in (401, 404, 405), response.content


# What the fuzzing above found, pinned as plain tests.


def test_a_nul_character_is_a_bad_request_not_an_outage(world: World) -> None:
    """PostgreSQL text cannot hold NUL; it used to fail in the database and answer 503."""
    for path, data in [
        ("/api/rooms/general/messages", {"body": "a\x00b", "client_msg_id": "m9"}),
        ("/api/rooms", {"slug": "nul", "title": "a\x00b"}),
        ("/api/rooms/den/members", {"username": "bob\x00"}),
    ]:
        response = request(
            world, "token", "POST", path, json.dumps(data).encode(), "application/json"
        )
        assert response.status_code == 400
        assert "NUL" in response.json()["error"]["message"]
    response = request(world, "token", "DELETE", "/api/rooms/den/members/bob%00")
    assert response.status_code == 400


def test_form_bodies_from_a_browser_session_get_json_errors(world: World) -> None:
    """The CSRF check reads form bodies first: a multipart body used to make the view fail with
    500 (the stream was spent), a malformed or oversized one got Django's HTML 400 page."""
    cases = [
        ("multipart/form-data; boundary=fuzz", b"{}", 400),
        ("multipart/form-data", b"{}", 400),
        ("application/x-www-form-urlencoded", b"a=" + b"x" * 70_000, 413),
        ("application/x-www-form-urlencoded", b"&".join(b"f%d=1" % i for i in range(1500)), 400),
    ]
    for content_type, body, status in cases:
        response = request(world, "session_csrf", "POST", "/api/rooms", body, content_type)
        assert response.status_code == status, (content_type, response.content)


def test_data_the_database_refuses_is_a_bad_request_not_an_outage(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The envelope's safety net for any value PostgreSQL refuses that no check caught."""

    def refuse(*args: Any) -> None:
        raise DataError("value out of range")

    monkeypatch.setattr(actions, "do_mark_read", refuse)
    body = json.dumps({"seq": 1}).encode()
    response = request(world, "token", "POST", "/api/rooms/general/read", body, "application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
