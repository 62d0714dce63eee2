"""Who may connect, and the HTTP API around it, on the real server (docs/protocol.md).

The websocket handshake: a token needs no Origin, a session cookie needs an
allowed one, anything else is refused with HTTP 403 before the upgrade. Then
the HTTP API end to end: rooms, private rooms and members, history pages, and
CSRF for session-authenticated writes.
"""

from __future__ import annotations

from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from tests.e2e.http_client import Http, create_room_sync, login, unique_slug
from tests.e2e.servers import Pod, Stack
from tests.e2e.wsclient import Sockets, WsClient

pytestmark = pytest.mark.e2e

UNKNOWN_TOKEN = "ct_" + "A" * 43


async def refused_status(url: str, **kwargs: Any) -> int:
    """The HTTP status of a refused handshake (fails if the server accepts it)."""
    try:
        client = await WsClient.connect(url, **kwargs)
    except InvalidStatus as refused:
        status: int = refused.response.status_code
        return status
    await client.close()
    pytest.fail("the server accepted the handshake")


# The handshake.


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-credentials"),
        pytest.param({"Authorization": f"Bearer {UNKNOWN_TOKEN}"}, id="unknown-token"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
        pytest.param({"Authorization": "Basic YWxpY2U6cHc="}, id="not-a-bearer-token"),
        pytest.param({"Origin": "http://127.0.0.1"}, id="allowed-origin-but-no-session"),
        pytest.param(
            {"Cookie": "sessionid=not-a-session", "Origin": "http://127.0.0.1"},
            id="bogus-session-cookie",
        ),
    ],
)
async def test_a_handshake_without_valid_credentials_is_refused_with_403(
    pod_a: Pod, headers: dict[str, str]
) -> None:
    assert await refused_status(pod_a.ws_url, headers=headers) == 403


async def test_an_unknown_token_does_not_fall_back_to_the_session(
    pod_a: Pod, alice_session: Http
) -> None:
    status = await refused_status(
        pod_a.ws_url,
        token=UNKNOWN_TOKEN,
        cookie=alice_session.cookie_header(),
        origin=pod_a.origin,
    )
    assert status == 403


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param("http://evil.example", id="foreign-host"),
        pytest.param("http://127.0.0.1.evil.example", id="allowed-host-as-a-prefix"),
        pytest.param("http://evil.example:{port}", id="foreign-host-on-the-right-port"),
        pytest.param("null", id="opaque-origin"),
        pytest.param("file://127.0.0.1", id="not-http"),
    ],
)
async def test_a_session_cookie_with_a_foreign_origin_is_refused(
    pod_a: Pod, alice_session: Http, origin: str
) -> None:
    status = await refused_status(
        pod_a.ws_url,
        cookie=alice_session.cookie_header(),
        origin=origin.format(port=pod_a.port),
    )
    assert status == 403


async def test_a_session_cookie_without_an_origin_is_refused(
    pod_a: Pod, alice_session: Http
) -> None:
    status = await refused_status(pod_a.ws_url, cookie=alice_session.cookie_header())
    assert status == 403


@pytest.mark.parametrize("pod_index", [0, 1], ids=["pod-a", "pod-b"])
async def test_a_session_cookie_from_an_allowed_origin_connects_and_subscribes(
    pods: tuple[Pod, Pod], alice_session: Http, room: str, pod_index: int
) -> None:
    pod = pods[pod_index]
    async with await WsClient.connect(
        pod.ws_url, cookie=alice_session.cookie_header(), origin=pod.origin
    ) as client:
        subscribed = await client.subscribe(room)
        ack = await client.publish(room, "from the browser")
        message = await client.wait_for_seq(room, ack["seq"])

    assert subscribed["last_seq"] == 0
    assert message["sender"] == "alice"


async def test_a_token_needs_no_origin_and_any_origin_is_fine(
    stack: Stack, pod_a: Pod, room: str
) -> None:
    for origin in (None, "http://evil.example"):
        async with await WsClient.connect(
            pod_a.ws_url, token=stack.tokens["bob"], origin=origin
        ) as client:
            await client.subscribe(room)


async def test_logging_out_closes_that_sessions_sockets_with_4001(
    stack: Stack, pod_a: Pod, pod_b: Pod, alice_session: Http, room: str
) -> None:
    # A session of its own: logging out the shared one would break other tests.
    browser = login(pod_a.url, "alice", stack.passwords["alice"])
    doomed = await WsClient.connect(
        pod_b.ws_url, cookie=browser.cookie_header(), origin=pod_b.origin, name="logged out"
    )
    other_session = await WsClient.connect(
        pod_b.ws_url, cookie=alice_session.cookie_header(), origin=pod_b.origin
    )
    by_token = await WsClient.connect(pod_b.ws_url, token=stack.tokens["alice"])
    try:
        await doomed.subscribe(room)
        csrf = browser.cookie("csrftoken")
        assert csrf

        out = await browser.post("/accounts/logout/", headers={"X-CSRFToken": csrf})

        assert out.status == 302, out.text
        assert await doomed.wait_closed() == 4001
        await other_session.ping()
        await by_token.ping()
    finally:
        for client in (doomed, other_session, by_token):
            await client.close()


# The HTTP API.


async def test_the_api_needs_credentials(pod_a: Pod) -> None:
    for client in (Http(pod_a.url), Http(pod_a.url, token=UNKNOWN_TOKEN)):
        answer = await client.get("/api/rooms")
        assert answer.status == 401, answer.text
        assert answer.json()["error"]["code"] == "unauthorized"


async def test_a_room_is_created_once_and_only_with_a_valid_slug(alice_api: Http) -> None:
    slug = unique_slug()

    created = await alice_api.post("/api/rooms", {"slug": slug, "title": "Room", "private": False})
    again = await alice_api.post("/api/rooms", {"slug": slug, "title": "Other"})

    assert created.status == 201, created.text
    assert created.json() == {"slug": slug, "title": "Room", "private": False, "last_seq": 0}
    assert again.status == 409, again.text
    assert again.json()["error"]["code"] == "conflict"
    for bad in ("Upper", "has space", "-leading", "trailing-", "a" * 51, "", "ünï", "a_b"):
        answer = await alice_api.post("/api/rooms", {"slug": bad, "title": "Bad"})
        assert answer.status == 400, (bad, answer.text)
        assert answer.json()["error"]["code"] == "bad_request"


async def test_a_private_room_is_closed_to_non_members_until_the_owner_adds_them(
    alice_api: Http, bob_api: Http, charlie_api: Http, private_room: str
) -> None:
    path = f"/api/rooms/{private_room}/messages"
    first = await alice_api.post(path, {"body": "secret", "client_msg_id": "s-1"})
    assert first.status == 201, first.text

    for outsider in (bob_api, charlie_api):
        read = await outsider.get(path + "?after=0")
        write = await outsider.post(path, {"body": "let me in", "client_msg_id": "x-1"})
        assert (read.status, write.status) == (403, 403), (read.text, write.text)
        assert read.json()["error"]["code"] == write.json()["error"]["code"] == "forbidden"
    missing = await bob_api.get("/api/rooms/no-such-room-e2e/messages")
    assert missing.status == 404, missing.text

    added = await alice_api.post(f"/api/rooms/{private_room}/members", {"username": "bob"})
    assert added.status == 201, added.text

    read = await bob_api.get(path + "?after=0")
    assert read.status == 200, read.text
    assert [(m["seq"], m["body"]) for m in read.json()["messages"]] == [(1, "secret")]
    written = await bob_api.post(path, {"body": "thanks", "client_msg_id": "b-1"})
    assert written.status == 201, written.text
    assert written.json()["seq"] == 2
    # Only the owner manages members, and Charlie is still out.
    by_member = await bob_api.post(f"/api/rooms/{private_room}/members", {"username": "charlie"})
    assert by_member.status == 403, by_member.text
    still_out = await charlie_api.get(path)
    assert still_out.status == 403, still_out.text
    listed = await charlie_api.get("/api/rooms")
    assert private_room not in [r["slug"] for r in listed.json()["rooms"]]


async def test_a_member_added_over_http_can_subscribe_over_the_websocket(
    alice_api: Http, sockets: Sockets, pod_b: Pod, private_room: str
) -> None:
    await alice_api.post(
        f"/api/rooms/{private_room}/messages", {"body": "hi", "client_msg_id": "1"}
    )
    charlie = await sockets.open(pod_b, "charlie")
    refused = await charlie.request({"type": "subscribe", "room": private_room, "since": 0})
    assert (refused["type"], refused["code"]) == ("error", "forbidden")

    added = await alice_api.post(f"/api/rooms/{private_room}/members", {"username": "charlie"})
    assert added.status == 201, added.text

    subscribed = await charlie.subscribe(private_room, since=0)
    assert subscribed["last_seq"] == 1
    assert charlie.seqs(private_room) == [1]


def seqs_of(answer: Any) -> tuple[list[int], bool]:
    page = answer.json()
    return [m["seq"] for m in page["messages"]], page["has_more"]


async def test_history_pages_after_and_before_a_seq_with_has_more(
    alice_api: Http, room: str
) -> None:
    path = f"/api/rooms/{room}/messages"
    for n in range(1, 8):
        posted = await alice_api.post(path, {"body": f"m{n}", "client_msg_id": f"m-{n}"})
        assert (posted.status, posted.json()["seq"]) == (201, n), posted.text

    pages = {
        "?after=0&limit=3": ([1, 2, 3], True),
        "?after=3&limit=3": ([4, 5, 6], True),
        "?after=6&limit=3": ([7], False),
        "?after=7": ([], False),
        "?before=8&limit=3": ([5, 6, 7], True),
        "?before=5&limit=3": ([2, 3, 4], True),
        "?before=2&limit=3": ([1], False),
        "?limit=3": ([5, 6, 7], True),
        "": ([1, 2, 3, 4, 5, 6, 7], False),
        "?after=0&limit=7": ([1, 2, 3, 4, 5, 6, 7], False),
    }
    for query, expected in pages.items():
        answer = await alice_api.get(path + query)
        assert answer.status == 200, (query, answer.text)
        assert seqs_of(answer) == expected, query

    for query in ("?limit=0", "?limit=201", "?after=-1", "?after=x", "?after=1&before=5"):
        answer = await alice_api.get(path + query)
        assert answer.status == 400, (query, answer.text)
        assert answer.json()["error"]["code"] == "bad_request"


async def test_an_http_publish_retry_returns_the_stored_message(
    bob_api: Http, alice_api: Http, room: str
) -> None:
    path = f"/api/rooms/{room}/messages"
    first = await bob_api.post(path, {"body": "once", "client_msg_id": "http-retry"})
    again = await bob_api.post(path, {"body": "once", "client_msg_id": "http-retry"})

    assert (first.status, again.status) == (201, 200)
    assert first.json() == again.json()
    history = await alice_api.get(path + "?after=0")
    assert seqs_of(history) == ([1], False)


async def test_a_session_write_needs_the_csrf_token(alice_session: Http, pod_b: Pod) -> None:
    # The session from logging in on pod A works on pod B as well.
    client = alice_session.on(pod_b.url)
    me = await client.get("/api/me")
    assert (me.status, me.json()["username"]) == (200, "alice"), me.text
    csrf = client.cookie("csrftoken")
    assert csrf, "GET /api/me set no CSRF cookie"
    slug = unique_slug()

    without = await client.post("/api/rooms", {"slug": slug})
    with_token = await client.post("/api/rooms", {"slug": slug}, headers={"X-CSRFToken": csrf})

    assert without.status == 403, without.text
    assert without.headers["content-type"] == "application/json"
    assert without.json()["error"]["code"] == "forbidden"
    assert with_token.status == 201, with_token.text
    assert with_token.json()["slug"] == slug


async def test_a_token_write_needs_no_csrf_token(stack: Stack, pod_b: Pod) -> None:
    client = Http(pod_b.url, token=stack.tokens["charlie"])
    slug = create_room_sync(client)
    answer = await client.post(f"/api/rooms/{slug}/messages", {"body": "hi", "client_msg_id": "1"})
    assert answer.status == 201, answer.text
