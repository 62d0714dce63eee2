"""Channel-layer group names. Built by the server from ids, never taken from a client."""

from __future__ import annotations

from typing import Any


def room_group(room_id: int) -> str:
    return f"room.{room_id}"


def user_group(user_id: Any) -> str:
    return f"user.{user_id}"
