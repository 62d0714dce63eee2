"""The Channels tutorial's async chat consumer, as its docs write it, plus a protocol shim.

Kept from the tutorial: AsyncWebsocketConsumer, the RedisChannelLayer, one
group per room, `group_send` per message and `json.dumps` per recipient in
`chat_message`. Added, and no more: subscribe/publish frames instead of the
room in the URL and `{"message": ...}`, and a per-room seq so chat-loadtest
can check the stream. The seq is a Redis INCR (so that two processes agree),
taken with the group_send under a per-process lock (so that one process's
broadcasts leave in seq order).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from redis.asyncio import Redis

_seqs: Redis | None = None
_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)


def seqs() -> Redis:
    global _seqs  # one client per process, made on first use inside its event loop
    if _seqs is None:
        _seqs = Redis.from_url(str(settings.REDIS_URL))
    return _seqs


class ChatConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    async def connect(self) -> None:
        self.room_group_names: set[str] = set()
        await self.accept()

    async def disconnect(self, close_code: int) -> None:
        # Leave room groups
        for group in self.room_group_names:
            await self.channel_layer.group_discard(group, self.channel_name)

    # Receive message from WebSocket
    async def receive(self, text_data: str) -> None:
        text_data_json = json.loads(text_data)
        kind, ref, room = text_data_json["type"], text_data_json.get("ref"), text_data_json["room"]
        room_group_name = f"chat_{room}"
        if kind == "subscribe":
            # Join room group
            await self.channel_layer.group_add(room_group_name, self.channel_name)
            self.room_group_names.add(room_group_name)
            last_seq = int(await seqs().get(f"seq:{room}") or 0)
            await self.send(
                text_data=json.dumps(
                    {"type": "subscribed", "ref": ref, "room": room, "last_seq": last_seq}
                )
            )
        elif kind == "publish":
            async with _locks[room]:
                seq = await seqs().incr(f"seq:{room}")
                # Send message to room group
                await self.channel_layer.group_send(
                    room_group_name,
                    {
                        "type": "chat.message",
                        "room": room,
                        "seq": seq,
                        "body": text_data_json["body"],
                        "client_msg_id": text_data_json["client_msg_id"],
                    },
                )
            await self.send(
                text_data=json.dumps(
                    {
                        "type": "ack",
                        "ref": ref,
                        "room": room,
                        "seq": seq,
                        "client_msg_id": text_data_json["client_msg_id"],
                    }
                )
            )

    # Receive message from room group
    async def chat_message(self, event: dict[str, Any]) -> None:
        # Send message to WebSocket
        await self.send(
            text_data=json.dumps(
                {
                    "type": "message",
                    "room": event["room"],
                    "seq": event["seq"],
                    "sender": "load",
                    "body": event["body"],
                    "client_msg_id": event["client_msg_id"],
                    "ts": datetime.now(UTC).isoformat(),
                }
            )
        )
