"""The websocket route: one path, matched without Channels' URLRouter.

URLRouter copies the scope (to add `url_route`) and stays on the stack for the
socket's whole life: about 1 KB per idle socket, for one fixed path.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from realtime.consumers import ChatConsumer

WEBSOCKET_PATH = "/ws/"

chat_consumer = ChatConsumer.as_asgi()


def websocket_app(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
    # A plain function handing back the consumer's coroutine: the server awaits that one
    # directly, with no frame of this function kept for the socket's life (250 bytes).
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if path == WEBSOCKET_PATH:
        return chat_consumer(scope, receive, send)  # type: ignore[no-any-return]
    return refuse(receive, send)


async def refuse(receive: Any, send: Any) -> None:
    """Any other path: refuse the handshake (the server answers HTTP 403)."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close"})
