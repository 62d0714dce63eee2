"""When users last had a socket open (presence's heartbeats keep it), for chores like emails."""

from __future__ import annotations

from collections.abc import Sequence


def last_seen(user_ids: Sequence[int]) -> dict[int, float | None]:
    """Unix time each user last had an open socket (now if one is open); None: not known."""
    # TODO(presence): being built
    return dict.fromkeys(user_ids)
