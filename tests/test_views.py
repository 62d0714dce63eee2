"""The JSON API, in-process: auth, CSRF, every endpoint, errors and query counts."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from web import actions
from web.models import Message, Room


def bearer(client: Client, username: str) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {actions.do_issue_token(username)}"}


@pytest.fixture
def as_alice(alice: Any) -> dict[str, Any]:
    return bearer(Client(), "alice")


@pytest.fixture
def as_bob(bob: Any) -> dict[str, Any]:
    return bearer(Client(), "bob")


@pytest.fixture
def as_charlie(charlie: Any) -> dict[str, Any]:
    return bearer(Client(), "charlie")


@pytest.fixture
def den(alice: Any, bob: Any) -> Room:
    """Alice's private room, with Bob as a member."""
    room = actions.do_create_room(alice, "den", "Alice's den", private=True)
    actions.do_add_member(alice, room, "bob")
    return room


def post(client: Client, path: str, data: Any, **extra: Any) -> Any:
    return client.post(path, data, content_type="application/json", **extra)


def test_it_requires_authentication(client: Client, db: None) -> None:
    response = client.get("/api/rooms")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_it_rejects_an_unknown_token(client: Client, db: None) -> None:
    response = client.get("/api/rooms", HTTP_AUTHORIZATION="Bearer ct_nope")
    assert response.status_code == 401


def test_it_creates_a_room(client: Client, as_alice: dict[str, Any]) -> None:
    response = post(
        client, "/api/rooms", {"slug": "den", "title": "Den", "private": True}, **as_alice
    )
    assert response.status_code == 201
    assert response.json() == {"slug": "den", "title": "Den", "private": True, "last_seq": 0}
    again = post(client, "/api/rooms", {"slug": "den", "title": "Den"}, **as_alice)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    "data",
    [
        {"slug": "Bad Slug"},
        {"slug": 5},
        {"title": "no slug"},
        {"slug": "ok", "private": "yes"},
        {"slug": "ok", "title": ""},
        ["not", "an", "object"],
    ],
)
def test_it_rejects_a_bad_room(client: Client, as_alice: dict[str, Any], data: Any) -> None:
    response = post(client, "/api/rooms", data, **as_alice)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert Room.objects.count() == 1  # only general


def test_it_rejects_malformed_json(client: Client, as_alice: dict[str, Any]) -> None:
    response = client.post("/api/rooms", "{nope", content_type="application/json", **as_alice)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


def test_it_rejects_an_oversized_body(client: Client, as_alice: dict[str, Any]) -> None:
    response = post(client, "/api/rooms/general/messages", {"body": "x" * 70_000}, **as_alice)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_it_lists_visible_rooms_with_unread_counts(
    client: Client,
    den: Room,
    alice: Any,
    as_alice: dict[str, Any],
    as_bob: dict[str, Any],
    as_charlie: dict[str, Any],
    django_assert_num_queries: Any,
) -> None:
    for i in range(3):
        actions.do_send_message(alice, den, "m", f"c{i}")
    den.refresh_from_db()
    actions.do_mark_read(alice, den, 1)
    with django_assert_num_queries(2):  # the token, then one query for all rooms
        rooms = client.get("/api/rooms", **as_bob).json()["rooms"]
    assert [(r["slug"], r["unread"], r["last_seq"], r["member"], r["owner"]) for r in rooms] == [
        ("den", 3, 3, True, False),
        ("general", 0, 0, False, False),
    ]
    # Only the owner is told they own it (the page shows them the "add a member" form).
    rooms = client.get("/api/rooms", **as_alice).json()["rooms"]
    assert [(r["slug"], r["owner"]) for r in rooms] == [("den", True), ("general", False)]
    # Charlie should have no access to Alice's private room: he does not even see it.
    rooms = client.get("/api/rooms", **as_charlie).json()["rooms"]
    assert [r["slug"] for r in rooms] == ["general"]


def test_only_members_read_a_private_room(
    client: Client, den: Room, as_bob: dict[str, Any], as_charlie: dict[str, Any]
) -> None:
    assert client.get("/api/rooms/den/messages", **as_bob).status_code == 200
    response = client.get("/api/rooms/den/messages", **as_charlie)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    response = post(
        client, "/api/rooms/den/messages", {"body": "hi", "client_msg_id": "c"}, **as_charlie
    )
    assert response.status_code == 403
    assert not Message.objects.exists()


def test_an_unknown_room_is_404(client: Client, as_alice: dict[str, Any]) -> None:
    response = client.get("/api/rooms/nope/messages", **as_alice)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_unknown_api_paths_answer_json_404(client: Client, as_alice: dict[str, Any]) -> None:
    response = client.get("/api/nothing-here", **as_alice)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_owner_manages_members(
    client: Client, den: Room, charlie: Any, as_alice: dict[str, Any], as_bob: dict[str, Any]
) -> None:
    assert post(
        client, "/api/rooms/den/members", {"username": "charlie"}, **as_bob
    ).status_code == (403)
    assert (
        post(client, "/api/rooms/den/members", {"username": "charlie"}, **as_alice).status_code
        == 201
    )
    assert post(client, "/api/rooms/den/members", {"username": "zed"}, **as_alice).status_code == (
        404
    )
    assert client.delete("/api/rooms/den/members/charlie", **as_alice).status_code == 204
    assert client.delete("/api/rooms/den/members/charlie", **as_alice).status_code == 404
    response = client.delete(
        "/api/rooms/den/members", {"username": "bob"}, content_type="application/json", **as_alice
    )
    assert response.status_code == 204


def test_it_publishes_and_retries_idempotently(
    client: Client, den: Room, as_bob: dict[str, Any]
) -> None:
    data = {"body": "<script>alert(1)</script>", "client_msg_id": "m-1"}
    first = post(client, "/api/rooms/den/messages", data, **as_bob)
    assert first.status_code == 201
    assert first["Content-Type"] == "application/json"
    message = first.json()
    assert (message["seq"], message["sender"], message["room"]) == (1, "bob", "den")
    # Bodies are data, never markup: returned verbatim inside JSON.
    assert message["body"] == "<script>alert(1)</script>"
    retry = post(client, "/api/rooms/den/messages", data, **as_bob)
    assert retry.status_code == 200
    assert retry.json() == message
    assert Message.objects.count() == 1


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        ({"client_msg_id": "c"}, 400, "bad_request"),
        ({"body": "hi"}, 400, "bad_request"),
        ({"body": 3, "client_msg_id": "c"}, 400, "bad_request"),
        ({"body": "", "client_msg_id": "c"}, 400, "bad_request"),
        ({"body": "x" * 4001, "client_msg_id": "c"}, 413, "too_large"),
    ],
)
def test_it_stores_nothing_for_a_bad_message(
    client: Client, as_alice: dict[str, Any], data: Any, status: int, code: str
) -> None:
    response = post(client, "/api/rooms/general/messages", data, **as_alice)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert not Message.objects.exists()


def test_it_pages_history(
    client: Client, den: Room, alice: Any, as_bob: dict[str, Any], django_assert_num_queries: Any
) -> None:
    for i in range(7):
        actions.do_send_message(alice, den, f"m{i}", f"c{i}")

    def page(query: str) -> tuple[list[int], bool]:
        data = client.get(f"/api/rooms/den/messages?{query}", **as_bob).json()
        return [m["seq"] for m in data["messages"]], data["has_more"]

    assert page("after=0&limit=3") == ([1, 2, 3], True)
    assert page("after=3&limit=3") == ([4, 5, 6], True)
    assert page("after=6&limit=3") == ([7], False)
    assert page("before=7&limit=3") == ([4, 5, 6], True)
    assert page("before=3&limit=3") == ([1, 2], False)
    assert page("limit=2") == ([6, 7], True)
    # token, messages with their senders: no N+1 (the room with membership was cached by
    # the pages above; web/cache.py)
    with django_assert_num_queries(2):
        client.get("/api/rooms/den/messages?after=0&limit=200", **as_bob)


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=201", "after=-1", "after=x", "before=0", "after=1&before=5"]
)
def test_it_rejects_bad_paging(client: Client, as_alice: dict[str, Any], query: str) -> None:
    response = client.get(f"/api/rooms/general/messages?{query}", **as_alice)
    assert response.status_code == 400


def test_mark_read(client: Client, den: Room, alice: Any, as_bob: dict[str, Any]) -> None:
    actions.do_send_message(alice, den, "m", "c1")
    response = post(client, "/api/rooms/den/read", {"seq": 1}, **as_bob)
    assert response.json() == {"room": "den", "last_read_seq": 1}
    assert post(client, "/api/rooms/den/read", {"seq": "1"}, **as_bob).status_code == 400


def test_wrong_methods_get_405(client: Client, as_alice: dict[str, Any]) -> None:
    response = client.put("/api/rooms", **as_alice)
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"


def test_session_writes_need_csrf_and_token_writes_do_not(alice: Any) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    data = {"slug": "den", "title": "Den"}
    refused = post(browser, "/api/rooms", data)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    browser.get("/api/me")  # sets the CSRF cookie
    token = browser.cookies["csrftoken"].value
    assert post(browser, "/api/rooms", data, HTTP_X_CSRFTOKEN=token).status_code == 201
    scripted = Client(enforce_csrf_checks=True)
    headers = bearer(scripted, "alice")
    assert post(scripted, "/api/rooms", {"slug": "den2"}, **headers).status_code == 201


def test_a_bad_token_does_not_fall_back_to_the_session(alice: Any) -> None:
    browser = Client()
    browser.force_login(alice)
    assert browser.get("/api/rooms").status_code == 200
    assert browser.get("/api/rooms", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401


def test_healthz(client: Client) -> None:
    assert client.get("/healthz").json() == {"ok": True}


def test_the_home_page_needs_a_login_and_names_the_user(client: Client, alice: Any) -> None:
    assert client.get("/").status_code == 302
    client.force_login(alice)
    response = client.get("/")
    assert response.status_code == 200
    assert b"alice" in response.content
