"""The least an ASGI websocket app can be: accept, answer `subscribe`, hold the socket.

Served by uvicorn (`python -m bench.memory`), it shows what uvicorn's own
websocket protocol costs per idle connection, below any framework.
"""

from __future__ import annotations

import json
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive" and event.get("text"):
            frame = json.loads(event["text"])
            if frame.get("type") == "subscribe":
                reply = {"type": "subscribed", "ref": frame.get("ref"), "room": frame.get("room")}
                await send({"type": "websocket.send", "text": json.dumps({**reply, "last_seq": 0})})
        elif event["type"] == "websocket.disconnect":
            return
