"""Parse client frames of the /ws/ protocol (docs/protocol.md) into typed commands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from django.db import DatabaseError

from web.errors import ApiError, BadRequest, Unavailable

MAX_REF_CHARS = 64


class ProtocolError(ApiError):
    """A bad frame; carries the frame's ref when it could be read."""

    def __init__(self, error: ApiError, ref: str | None):
        super().__init__(error.message, code=error.code, status=error.status)
        self.ref = ref


@dataclass(frozen=True, slots=True)
class Subscribe:
    ref: str | None
    room: str
    since: int | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    ref: str | None
    room: str


@dataclass(frozen=True, slots=True)
class Publish:
    ref: str | None
    room: str
    body: str
    client_msg_id: str


@dataclass(frozen=True, slots=True)
class Typing:
    ref: str | None
    room: str


@dataclass(frozen=True, slots=True)
class Ping:
    ref: str | None


Command = Subscribe | Unsubscribe | Publish | Typing | Ping


def parse(text: str) -> Command:
    """Parse one text frame; raise ProtocolError (code bad_request) if it is not a valid command."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError(BadRequest("frame is not valid JSON"), None) from None
    if not isinstance(data, dict):
        raise ProtocolError(BadRequest("frame must be a JSON object"), None)
    ref = data.get("ref")
    if ref is not None and not (isinstance(ref, str) and len(ref) <= MAX_REF_CHARS):
        raise ProtocolError(BadRequest(f"ref must be a string of at most {MAX_REF_CHARS}"), None)
    try:
        return _command(data, ref)
    except ApiError as error:
        raise ProtocolError(error, ref) from None


def _command(data: dict[str, Any], ref: str | None) -> Command:
    kind = data.get("type")
    if kind == "publish":
        return Publish(ref, _room(data), _str(data, "body"), _str(data, "client_msg_id"))
    if kind == "subscribe":
        since = data.get("since")
        if since is not None and not (
            isinstance(since, int) and not isinstance(since, bool) and 0 <= since < 2**63
        ):
            raise BadRequest("since must be a non-negative integer")
        return Subscribe(ref, _room(data), since)
    if kind == "unsubscribe":
        return Unsubscribe(ref, _room(data))
    if kind == "typing":
        return Typing(ref, _room(data))
    if kind == "ping":
        return Ping(ref)
    if not isinstance(kind, str):
        raise BadRequest("type must be a string")
    raise BadRequest(f"unknown type {kind[:32]!r}")


def _room(data: dict[str, Any]) -> str:
    return _str(data, "room", max_chars=50)


def _str(data: dict[str, Any], field: str, max_chars: int | None = None) -> str:
    value = data.get(field)
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    if "\x00" in value:
        # PostgreSQL cannot store NUL; refuse it here rather than fail the write.
        raise BadRequest(f"{field} must not contain NUL characters")
    if max_chars is not None and len(value) > max_chars:
        raise BadRequest(f"{field} must be at most {max_chars} characters")
    return value


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
