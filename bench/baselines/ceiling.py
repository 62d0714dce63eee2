"""The ceiling: a bare `websockets` server, no framework, no Redis, no database.

It speaks just enough of docs/protocol.md for chat-loadtest (subscribe, publish,
ack, message with a per-room seq) and does one `websockets.broadcast` per
message, serialised once. Nothing a real chat server needs (auth, storage,
other processes) costs it anything, so no product can beat it by much.

    python bench/baselines/ceiling.py --port 8301
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict
from datetime import UTC, datetime

from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: defaultdict[str, set[ServerConnection]] = defaultdict(set)
seqs: defaultdict[str, int] = defaultdict(int)


async def handler(ws: ServerConnection) -> None:
    joined: set[str] = set()
    try:
        async for text in ws:
            frame = json.loads(text)
            kind, ref, room = frame.get("type"), frame.get("ref"), frame.get("room", "")
            if kind == "subscribe":
                rooms[room].add(ws)
                joined.add(room)
                reply = {"type": "subscribed", "ref": ref, "room": room, "last_seq": seqs[room]}
                await ws.send(json.dumps(reply))
            elif kind == "publish":
                seqs[room] += 1
                seq = seqs[room]
                message = {
                    "type": "message",
                    "room": room,
                    "seq": seq,
                    "sender": "load",
                    "body": frame["body"],
                    "client_msg_id": frame["client_msg_id"],
                    "ts": datetime.now(UTC).isoformat(),
                }
                broadcast(rooms[room], json.dumps(message))
                ack = {
                    "type": "ack",
                    "ref": ref,
                    "room": room,
                    "seq": seq,
                    "client_msg_id": frame["client_msg_id"],
                }
                await ws.send(json.dumps(ack))
            elif kind == "ping":
                await ws.send(json.dumps({"type": "pong", "ref": ref}))
    finally:
        for room in joined:
            rooms[room].discard(ws)


async def main(host: str, port: int) -> None:
    # The same listen backlog as uvicorn (2048): a burst of connects must not hit SYN drops.
    async with serve(handler, host, port, compression=None, max_size=65536, backlog=2048) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8301)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.host, args.port))
    except ImportError:  # the same loop as uvicorn when it is there
        asyncio.run(main(args.host, args.port))
