"""Property-based fuzzing of the frame parser: whatever a client sends, parse() returns a
well-formed command or raises ProtocolError (which the consumer turns into an error frame), and
every valid command survives a round trip through JSON."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime import protocol
from realtime.protocol import Command, Ping, Publish, Subscribe, Typing, Unsubscribe
from tests.strategies import json_values

FUZZ = settings(max_examples=200, deadline=None)
KEYS = ["type", "ref", "room", "since", "body", "client_msg_id"]
TYPES = ["subscribe", "unsubscribe", "publish", "typing", "ping"]

# Objects that look like frames: the protocol's keys (and a few others) with any values, the
# type mostly one of the real ones so the field checks behind it get exercised.
frame_objects = st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=8),
    json_values,
    max_size=7,
).flatmap(
    lambda d: (
        st.one_of(st.sampled_from(TYPES), json_values).map(lambda t: {**d, "type": t}) | st.just(d)
    )
)


def encode(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


def check_outcome(text: str) -> Command | None:
    """Parse the text; fail the test on anything but a command or a well-formed ProtocolError."""
    error: protocol.ProtocolError | None = None
    try:
        command = protocol.parse(text)
    except protocol.ProtocolError as caught:
        error = caught
    if error is not None:
        assert error.code == "bad_request"
        assert error.ref is None or (isinstance(error.ref, str) and len(error.ref) <= 64)
        # The consumer sends exactly this; it must always serialise.
        frame = json.loads(protocol.error_frame(error.code, error.message, error.ref))
        assert frame["type"] == "error"
        return None
    assert isinstance(command, Subscribe | Unsubscribe | Publish | Typing | Ping)
    assert command.ref is None or (isinstance(command.ref, str) and len(command.ref) <= 64)
    if isinstance(command, Subscribe | Unsubscribe | Publish | Typing):
        assert isinstance(command.room, str)
        assert len(command.room) <= 50
    if isinstance(command, Subscribe) and command.since is not None:
        assert type(command.since) is int
        assert 0 <= command.since < 2**63
    if isinstance(command, Publish):
        assert isinstance(command.body, str)
        assert isinstance(command.client_msg_id, str)
        assert "\x00" not in command.body + command.client_msg_id + command.room
    return command


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises_anything_but_protocol_error(text: str) -> None:
    check_outcome(text)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decoded_as_text_never_raise_anything_but_protocol_error(
    raw: bytes,
) -> None:
    check_outcome(raw.decode("utf-8", errors="surrogateescape"))


@FUZZ
@given(json_values, st.booleans())
def test_arbitrary_json_values_never_raise_anything_but_protocol_error(
    value: Any, ascii_only: bool
) -> None:
    check_outcome(encode(value, ascii_only))


@FUZZ
@given(frame_objects, st.booleans())
def test_frame_shaped_objects_never_raise_anything_but_protocol_error(
    frame: dict[str, Any], ascii_only: bool
) -> None:
    check_outcome(encode(frame, ascii_only))


# Valid string fields are any text but NUL, which PostgreSQL cannot store (refused on parse).
stored_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=200
)
refs = st.none() | st.text(max_size=64)
unknown_keys = st.text(max_size=8).filter(lambda key: key not in KEYS)
rooms = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=50)
valid_commands = st.one_of(
    st.builds(Subscribe, ref=refs, room=rooms, since=st.none() | st.integers(0, 2**63 - 1)),
    st.builds(Unsubscribe, ref=refs, room=rooms),
    st.builds(
        Publish,
        ref=refs,
        room=rooms,
        body=stored_text,
        client_msg_id=stored_text.map(lambda t: t[:64]),
    ),
    st.builds(Typing, ref=refs, room=rooms),
    st.builds(Ping, ref=refs),
)


def to_frame(command: Command) -> dict[str, Any]:
    """The JSON object a client would send for the command (absent optional fields left out)."""
    kind = {
        Subscribe: "subscribe",
        Unsubscribe: "unsubscribe",
        Publish: "publish",
        Typing: "typing",
        Ping: "ping",
    }
    frame: dict[str, Any] = {"type": kind[type(command)]}
    for field in command.__struct_fields__:
        value = getattr(command, field)
        if value is not None:
            frame[field] = value
    return frame


@FUZZ
@given(valid_commands, st.dictionaries(unknown_keys, json_values, max_size=3))
def test_valid_commands_round_trip(command: Command, extra: dict[str, Any]) -> None:
    frame = to_frame(command)
    assert protocol.parse(orjson.dumps(frame).decode()) == command
    # Unknown keys are ignored, not fatal: clients may be newer than the server.
    assert protocol.parse(json.dumps({**extra, **frame})) == command
