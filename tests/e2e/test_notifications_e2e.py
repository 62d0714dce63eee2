"""Notifications end to end: two uvicorn pods, real PostgreSQL and Redis (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.e2e.http_client import Http
from tests.e2e.servers import Pod, Stack
from tests.e2e.wsclient import Frame, Sockets, WsClient

pytestmark = pytest.mark.e2e


async def notification_seq(ws: WsClient) -> int:
    """Restart the socket's notification stream live-only; the user's newest seq."""
    answer = await ws.request({"type": "subscribe_notifications"})
    assert answer["type"] == "notifications_subscribed", answer
    return int(answer["last_seq"])


def notifications_of(ws: WsClient) -> list[Frame]:
    return [f for f in ws.frames if f["type"] == "notification"]


async def test_a_mention_reaches_the_other_pod_live_and_is_recovered_after_a_reconnect(
    sockets: Sockets, pod_a: Pod, pod_b: Pod, room: str
) -> None:
    alice = await sockets.open(pod_a, "alice")
    bob = await sockets.open(pod_b, "bob")
    start = await notification_seq(bob)

    ack = await alice.publish(room, "hey @bob, look")
    live = await bob.wait_for(lambda f: f["type"] == "notification")
    assert (live["seq"], live["kind"]) == (start + 1, "mention")
    assert live["payload"] == {
        "room": room,
        "seq": ack["seq"],
        "sender": "alice",
        "excerpt": "hey @bob, look",
    }

    await bob.close()
    for i in range(3):
        await alice.publish(room, f"@bob missed {i}")
    again = await sockets.open(pod_a, "bob", name="bob-again")
    answer = await again.request({"type": "subscribe_notifications", "since": start + 1})
    assert answer == {
        "type": "notifications_subscribed",
        "ref": answer["ref"],
        "last_seq": start + 4,
    }
    missed = notifications_of(again)
    assert [f["seq"] for f in missed] == [start + 2, start + 3, start + 4]
    assert [f["payload"]["excerpt"] for f in missed] == [f"@bob missed {i}" for i in range(3)]
    await again.ping()
    assert len(notifications_of(again)) == 3  # exactly once


async def test_notify_is_idempotent_across_pods(
    stack: Stack, sockets: Sockets, pod_a: Pod, pod_b: Pod
) -> None:
    key = stack.manage("issue_service_key", "e2e-backend").strip()
    bob = await sockets.open(pod_b, "bob")
    start = await notification_seq(bob)
    kind = f"e2e-{uuid.uuid4().hex[:8]}"
    request = {
        "users": ["bob", "nobody-here"],
        "kind": kind,
        "payload": {"invoice": 7},
        "idempotency_key": kind,
    }
    # The same request to both pods at once, and once more after: one notification.
    answers = await asyncio.gather(
        Http(pod_a.url, token=key).post("/api/notify", request),
        Http(pod_b.url, token=key).post("/api/notify", request),
    )
    later = await Http(pod_b.url, token=key).post("/api/notify", request)
    for answer in [*answers, later]:
        assert answer.status == 200, answer.text
        assert answer.json() == {"notified": 1, "unknown": ["nobody-here"]}

    live = await bob.wait_for(lambda f: f["type"] == "notification" and f["kind"] == kind)
    assert (live["seq"], live["payload"]) == (start + 1, {"invoice": 7})
    stored = await Http(pod_a.url, token=stack.tokens["bob"]).get(
        f"/api/notifications?after={start}"
    )
    assert [n["kind"] for n in stored.json()["notifications"]] == [kind]
    await bob.ping()
    assert len(notifications_of(bob)) == 1
