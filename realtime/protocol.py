"""Parse client frames of the /ws/ protocol (docs/protocol.md) into typed commands."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
import orjson
from django.db import DatabaseError
from msgspec import Meta

from web.errors import ApiError, BadRequest, Unavailable

MAX_REF_CHARS = 64
MAX_ROOM_CHARS = 50  # Room.slug's max_length

Ref = Annotated[str, Meta(max_length=MAX_REF_CHARS)] | None
RoomSlug = Annotated[str, Meta(max_length=MAX_ROOM_CHARS)]
# A seq is a PostgreSQL bigint.
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class ProtocolError(ApiError):
    """A bad frame; carries the frame's ref when it could be read."""

    def __init__(self, error: ApiError, ref: str | None):
        super().__init__(error.message, code=error.code, status=error.status)
        self.ref = ref


# Each command is told apart by its "type" key. Fields are keyword-only because `ref`, optional,
# comes first; unknown keys are ignored, since clients may be newer than the server. Body and
# client_msg_id are only typed here: web/actions.py checks them (too_large, the id's alphabet).


class Subscribe(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="subscribe"):
    ref: Ref = None
    room: RoomSlug
    since: Seq | None = None


class Unsubscribe(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="unsubscribe"):
    ref: Ref = None
    room: RoomSlug


class Publish(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="publish"):
    ref: Ref = None
    room: RoomSlug
    body: str
    client_msg_id: str


class Typing(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="typing"):
    ref: Ref = None
    room: RoomSlug


class SubscribeNotifications(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="subscribe_notifications"
):
    ref: Ref = None
    since: Seq | None = None


class Read(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="read"):
    ref: Ref = None
    room: RoomSlug
    seq: Seq


class Ping(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="ping"):
    ref: Ref = None


Command = Subscribe | Unsubscribe | Publish | Typing | SubscribeNotifications | Read | Ping
COMMANDS = (Subscribe, Unsubscribe, Publish, Typing, SubscribeNotifications, Read, Ping)

_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
_TYPES = frozenset(kind.__struct_config__.tag for kind in COMMANDS)


class _RefOnly(msgspec.Struct):
    ref: Ref = None


class _TypeOnly(msgspec.Struct):
    type: str | None = None


_ref_decoder = msgspec.json.Decoder(_RefOnly)
_type_decoder = msgspec.json.Decoder(_TypeOnly)

# What each field must be, said once per field whatever msgspec found wrong with it.
_MUST = {
    "ref": f"ref must be a string of at most {MAX_REF_CHARS} characters",
    "room": f"room must be a string of at most {MAX_ROOM_CHARS} characters",
    "since": "since must be a non-negative integer",
    "seq": "seq must be a non-negative integer",
    "body": "body must be a string",
    "client_msg_id": "client_msg_id must be a string",
}
# msgspec names the field at the end of its message: "... - at `$.room`" or "... field `room`".
_FIELD_RE = re.compile(r"(?:at `\$\.|field `)(\w+)`$")


def parse(text: str) -> Command:
    """Parse one text frame; raise ProtocolError (code bad_request) if it is not a valid command."""
    try:
        command = _decoder.decode(text)
    except msgspec.ValidationError as error:
        raise _explain(text, error) from None
    except (msgspec.DecodeError, UnicodeEncodeError):
        # UnicodeEncodeError: a lone surrogate in the str, which has no UTF-8 form.
        raise ProtocolError(BadRequest("frame is not valid JSON"), None) from None
    # JSON has no raw NUL, only the escape: skip the field checks for the frames without one.
    if "\\u0000" in text:
        _refuse_nul(command)
    return command


def _explain(text: str, error: msgspec.ValidationError) -> ProtocolError:
    """The ProtocolError for valid JSON that is no valid command, with its ref if it has one."""
    # msgspec stops at the first bad field and does not say what the ref was: read it alone.
    try:
        ref = _ref_decoder.decode(text).ref
    except msgspec.ValidationError:
        # The text is valid JSON: if it is an object, what _RefOnly refused is its ref.
        if text.lstrip(" \t\r\n").startswith("{"):
            return ProtocolError(BadRequest(_MUST["ref"]), None)
        return ProtocolError(BadRequest("frame must be a JSON object"), None)
    match = _FIELD_RE.search(str(error))
    field = match.group(1) if match else None
    if field == "type":
        return ProtocolError(_bad_type(text), ref)
    if field in _MUST:
        return ProtocolError(BadRequest(_MUST[field]), ref)
    return ProtocolError(BadRequest(str(error)), ref)


def _bad_type(text: str) -> BadRequest:
    """Why msgspec refused the frame's type: missing or not a string, unknown, or repeated."""
    try:
        kind = _type_decoder.decode(text).type
    except msgspec.ValidationError:
        kind = None
    if kind is None:
        return BadRequest("type must be a string")
    if kind in _TYPES:
        # Known, yet msgspec refused it: the frame repeats "type" with different values.
        return BadRequest("type must be given once")
    return BadRequest(f"unknown type {kind[:32]!r}")


def _refuse_nul(command: Command) -> None:
    for field in ("room", "body", "client_msg_id"):
        if "\x00" in getattr(command, field, ""):
            # PostgreSQL cannot store NUL; refuse it here rather than fail the write.
            raise ProtocolError(BadRequest(f"{field} must not contain NUL characters"), command.ref)


def dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def error_frame(code: str, message: str, ref: str | None = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    return dumps(frame)


def unavailable(command: Command | None, error: BaseException) -> Unavailable:
    """The `unavailable` error for a command a backing service failed, naming both."""
    # The database's errors are DatabaseError; anything else here is Redis (the event feed).
    what = "the message store" if isinstance(error, DatabaseError) else "the event feed"
    if isinstance(command, Publish):
        return Unavailable(f"{what} is unavailable; publish again with the same client_msg_id")
    kind = type(command).__name__.lower() if command is not None else "request"
    return Unavailable(f"{kind} failed: {what} is unavailable; try again")


def too_large(text: str, limit: int) -> bool:
    """Whether a text frame is over `limit` bytes of UTF-8."""
    # A str has at most 4 UTF-8 bytes per character: only encode when it could matter.
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit)
