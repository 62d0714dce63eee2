"""The frame parser: every command shape, and every way a frame can be wrong."""

from __future__ import annotations

import pytest

from realtime import protocol
from realtime.protocol import Ping, Publish, Subscribe, Unsubscribe


def test_it_parses_every_command() -> None:
    assert protocol.parse('{"type":"subscribe","ref":"1","room":"general","since":41}') == (
        Subscribe(ref="1", room="general", since=41)
    )
    assert protocol.parse('{"type":"subscribe","room":"general"}') == Subscribe(
        ref=None, room="general", since=None
    )
    assert protocol.parse('{"type":"unsubscribe","ref":"2","room":"general"}') == Unsubscribe(
        ref="2", room="general"
    )
    assert protocol.parse(
        '{"type":"publish","ref":"3","room":"general","body":"hi","client_msg_id":"m1"}'
    ) == Publish(ref="3", room="general", body="hi", client_msg_id="m1")
    assert protocol.parse('{"type":"ping","ref":"4"}') == Ping(ref="4")


@pytest.mark.parametrize(
    ("text", "ref", "fragment"),
    [
        ("not json", None, "not valid JSON"),
        ("[1, 2]", None, "JSON object"),
        ('{"type": "dance", "ref": "7"}', "7", "unknown type"),
        ('{"type": 5, "ref": "7"}', "7", "type must be a string"),
        ('{"ref": "7"}', "7", "type must be a string"),
        ('{"type": "subscribe", "ref": "7"}', "7", "room must be a string"),
        ('{"type": "subscribe", "ref": "7", "room": 3}', "7", "room must be a string"),
        ('{"type": "subscribe", "ref": "7", "room": "g", "since": -1}', "7", "since"),
        ('{"type": "subscribe", "ref": "7", "room": "g", "since": true}', "7", "since"),
        ('{"type": "subscribe", "ref": "7", "room": "g", "since": "3"}', "7", "since"),
        ('{"type": "subscribe", "ref": "7", "room": "g", "since": 1.5}', "7", "since"),
        ('{"type": "publish", "ref": "7", "room": "g", "client_msg_id": "m"}', "7", "body"),
        (
            '{"type": "publish", "ref": "7", "room": "g", "body": 1, "client_msg_id": "m"}',
            "7",
            "body",
        ),
        ('{"type": "publish", "ref": "7", "room": "g", "body": "x"}', "7", "client_msg_id"),
        ('{"type": "ping", "ref": 4}', None, "ref must be a string"),
        ('{"type": "subscribe", "ref": "7", "room": "g\\u0000"}', "7", "NUL"),
        (
            '{"type": "publish", "ref": "7", "room": "g", "body": "\\u0000", "client_msg_id": "m"}',
            "7",
            "NUL",
        ),
        ('{"type": "ping", "ref": "' + "r" * 65 + '"}', None, "ref must be a string"),
    ],
)
def test_it_rejects_bad_frames(text: str, ref: str | None, fragment: str) -> None:
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.parse(text)
    assert caught.value.code == "bad_request"
    assert caught.value.ref == ref
    assert fragment in caught.value.message


def test_error_frames_carry_the_ref_only_when_known() -> None:
    assert protocol.error_frame("not_found", "no room", "9") == (
        '{"type":"error","code":"not_found","message":"no room","ref":"9"}'
    )
    assert '"ref"' not in protocol.error_frame("bad_request", "x")
