"""Presence changes, sent to the rooms' subscribers (nothing is stored: realtime/presence.py
keeps who is online in Redis)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from realtime import events


class PresenceChange(NamedTuple):
    """One room's users whose state changed in a flush window, by their state now."""

    room_id: int
    slug: str
    joined: list[str]
    left: list[str]


def do_presence_changes(changes: Sequence[PresenceChange]) -> None:
    """Tell each room's in-sync subscribers who joined and who left: one frame per room."""
    changed = [(c.room_id, c.slug, c.joined, c.left) for c in changes if c.joined or c.left]
    if changed:
        events.send_presence(changed)
