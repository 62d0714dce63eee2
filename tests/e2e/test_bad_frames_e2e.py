"""Bad frames on /ws/ end to end (docs/protocol.md): each gets its error and keeps the
connection, and a frame over 64 KiB closes it with 1009; nothing is stored."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.e2e.http_client import Http, history, last_seq
from tests.e2e.servers import Pod
from tests.e2e.wsclient import Sockets, publish_frame, types

pytestmark = pytest.mark.e2e

FRAME_LIMIT = 64 * 1024


# Every bad frame of docs/protocol.md: (id, the frame text given the public and the private
# room, the error code, the ref the error must echo).
BadFrame = Callable[[str, str], str]


def frame(**fields: object) -> BadFrame:
    """A JSON frame; "{room}" and "{private}" in string values name the test's rooms."""

    def build(room: str, private: str) -> str:
        filled = {
            k: v.format(room=room, private=private) if isinstance(v, str) else v
            for k, v in fields.items()
        }
        return json.dumps(filled)

    return build


def raw(text: str) -> BadFrame:
    return lambda room, private: text


def publish(**fields: object) -> BadFrame:
    base = {"type": "publish", "ref": "p1", "room": "{room}", "body": "hi", "client_msg_id": "c-1"}
    return frame(**{**base, **fields})


def subscribe(**fields: object) -> BadFrame:
    return frame(**{"type": "subscribe", "ref": "s1", "room": "{room}", **fields})


BAD_FRAMES: list[tuple[str, BadFrame, str, str | None]] = [
    ("malformed-json", raw('{"type": "ping", "ref": "x"'), "bad_request", None),
    ("not-json-at-all", raw("ping"), "bad_request", None),
    ("json-array", raw('[{"type": "ping", "ref": "x"}]'), "bad_request", None),
    ("json-string", raw('"ping"'), "bad_request", None),
    ("json-number", raw("42"), "bad_request", None),
    ("json-null", raw("null"), "bad_request", None),
    ("unknown-type", frame(type="shout", ref="u1", room="{room}"), "bad_request", "u1"),
    ("missing-type", frame(ref="u2", room="{room}"), "bad_request", "u2"),
    ("type-not-a-string", frame(type=["ping"], ref="u3"), "bad_request", "u3"),
    ("ref-not-a-string", frame(type="ping", ref=7), "bad_request", None),
    ("ref-over-64-chars", frame(type="ping", ref="r" * 65), "bad_request", None),
    ("subscribe-missing-room", frame(type="subscribe", ref="s1"), "bad_request", "s1"),
    ("publish-missing-room", frame(type="publish", ref="p1", body="hi"), "bad_request", "p1"),
    ("unsubscribe-missing-room", frame(type="unsubscribe", ref="x1"), "bad_request", "x1"),
    ("subscribe-room-not-a-string", subscribe(room=5), "bad_request", "s1"),
    ("publish-room-not-a-string", publish(room=["{room}"]), "bad_request", "p1"),
    ("publish-room-null", publish(room=None), "bad_request", "p1"),
    ("publish-missing-body", frame(type="publish", ref="p1", room="{room}"), "bad_request", "p1"),
    ("publish-body-not-a-string", publish(body=5), "bad_request", "p1"),
    ("publish-body-object", publish(body={"text": "hi"}), "bad_request", "p1"),
    ("since-a-string", subscribe(since="3"), "bad_request", "s1"),
    ("since-a-float", subscribe(since=1.5), "bad_request", "s1"),
    ("since-negative", subscribe(since=-1), "bad_request", "s1"),
    ("since-true", subscribe(since=True), "bad_request", "s1"),
    ("since-false", subscribe(since=False), "bad_request", "s1"),
    ("subscribe-unknown-room", subscribe(room="no-such-room-e2e"), "not_found", "s1"),
    ("publish-unknown-room", publish(room="no-such-room-e2e"), "not_found", "p1"),
    ("subscribe-private-room", subscribe(room="{private}"), "forbidden", "s1"),
    ("publish-private-room", publish(room="{private}"), "forbidden", "p1"),
    ("body-4001-chars", publish(body="x" * 4001), "too_large", "p1"),
    ("body-empty", publish(body=""), "bad_request", "p1"),
    ("client-msg-id-with-space", publish(client_msg_id="has space"), "bad_request", "p1"),
    ("client-msg-id-empty", publish(client_msg_id=""), "bad_request", "p1"),
    ("client-msg-id-65-chars", publish(client_msg_id="a" * 65), "bad_request", "p1"),
    ("client-msg-id-slash", publish(client_msg_id="a/b"), "bad_request", "p1"),
    ("client-msg-id-not-a-string", publish(client_msg_id=5), "bad_request", "p1"),
    (
        "client-msg-id-missing",
        frame(type="publish", ref="p1", room="{room}", body="hi"),
        "bad_request",
        "p1",
    ),
]


@pytest.mark.parametrize(
    ("build", "code", "ref"),
    [pytest.param(b, c, r, id=i) for i, b, c, r in BAD_FRAMES],
)
async def test_a_bad_frame_gets_an_error_keeps_the_connection_and_stores_nothing(
    sockets: Sockets,
    pod_a: Pod,
    room: str,
    private_room: str,
    alice_api: Http,
    build: BadFrame,
    code: str,
    ref: str | None,
) -> None:
    client = await sockets.open(pod_a, "bob")

    await client.send_raw(build(room, private_room))
    error = await client.wait_for(lambda f: f["type"] == "error")

    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    if ref is None:
        assert "ref" not in error, error
    else:
        assert error["ref"] == ref, error
    await client.ping()
    assert types(client.frames) == ["error", "pong"]
    assert await last_seq(alice_api, room) == 0
    assert await last_seq(alice_api, private_room) == 0
    assert await history(alice_api, room) == []
    assert await history(alice_api, private_room) == []


def sized_publish(room: str, size: int, char: str = "x") -> str:
    """A publish frame of exactly `size` UTF-8 bytes, its body mostly `char`."""
    empty = json.dumps(publish_frame(room, ""), ensure_ascii=False)
    left = size - len(empty.encode())
    width = len(char.encode())
    body = char * (left // width) + "x" * (left % width)
    text = json.dumps(publish_frame(room, body), ensure_ascii=False)
    assert len(text.encode()) == size
    return text


@pytest.mark.parametrize(
    ("size", "char"),
    [
        pytest.param(FRAME_LIMIT + 1, "x", id="one-byte-over"),
        pytest.param(100_000, "x", id="100-kb"),
        # Under the limit in characters, over it in bytes.
        pytest.param(FRAME_LIMIT + 3 * 400, "€", id="multibyte-over"),
    ],
)
async def test_a_frame_over_64_kib_closes_the_connection_with_1009(
    sockets: Sockets, pod_a: Pod, room: str, alice_api: Http, size: int, char: str
) -> None:
    client = await sockets.open(pod_a, "bob")
    text = sized_publish(room, size, char)

    await client.send_raw(text)

    assert await client.wait_closed() == 1009
    assert await last_seq(alice_api, room) == 0


async def test_a_frame_of_exactly_64_kib_is_read_and_answered(
    sockets: Sockets, pod_a: Pod, room: str, alice_api: Http
) -> None:
    client = await sockets.open(pod_a, "bob")

    await client.send_raw(sized_publish(room, FRAME_LIMIT))
    error = await client.wait_for(lambda f: f["type"] == "error")

    assert error["code"] == "too_large"
    await client.ping()
    assert await last_seq(alice_api, room) == 0
