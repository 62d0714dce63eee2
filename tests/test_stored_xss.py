"""Stored XSS: a message body is data, never markup. The API returns it verbatim inside JSON that
browsers may not sniff as HTML, and the one HTML page that shows bodies (the admin) escapes it."""

from __future__ import annotations

import json
from typing import Any

from django.test import Client

from realtime import protocol
from web import actions
from web.models import Message, Room

SCRIPT = "<script>alert(document.cookie)</script>"
PAYLOADS = [SCRIPT, '<img src=x onerror="alert(1)">', "</script><svg onload=alert(1)>"]


def as_json_api(response: Any) -> Any:
    assert response["Content-Type"] == "application/json"
    # Set by SecurityMiddleware: no browser second-guesses the type and renders HTML.
    assert response["X-Content-Type-Options"] == "nosniff"
    return response.json()


def test_message_bodies_come_back_verbatim_as_json_strings(alice: Any) -> None:
    client = Client()
    auth: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {actions.do_issue_token('alice')}"}
    for i, body in enumerate(PAYLOADS):
        response = client.post(
            "/api/rooms/general/messages",
            {"body": body, "client_msg_id": f"x{i}"},
            content_type="application/json",
            **auth,
        )
        assert response.status_code == 201
        assert as_json_api(response)["body"] == body
    history = client.get("/api/rooms/general/messages", **auth)
    assert [m["body"] for m in as_json_api(history)["messages"]] == PAYLOADS
    # Neither escaped into entities nor altered: a JSON string holding exactly what was sent.
    assert json.dumps(SCRIPT).encode() in history.content
    assert b"&lt;" not in history.content


def test_the_websocket_frame_carries_the_body_verbatim(alice: Any) -> None:
    sent = actions.do_send_message(alice, Room.objects.get(slug="general"), SCRIPT, "x1")
    assert json.loads(protocol.dumps(sent.frame))["body"] == SCRIPT


def test_the_admin_escapes_message_bodies(alice: Any, admin_client: Client) -> None:
    actions.do_send_message(alice, Room.objects.get(slug="general"), SCRIPT, "x1")
    client = admin_client
    message = Message.objects.get(client_msg_id="x1")
    page = client.get(f"/admin/web/message/{message.pk}/change/")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in page.content.decode()
    assert SCRIPT not in page.content.decode()
