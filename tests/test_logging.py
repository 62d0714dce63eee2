"""Structured logs: JSON lines, the request id and the connection id, and nothing secret."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from project import logs
from tests.test_consumers import Socket as ChatSocket
from tests.test_consumers import connect, token_headers
from web.models import Room


class Captured:
    """What the LOGGING formatter printed, one JSON object per line."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.text.splitlines()]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["event"] == event]


@pytest.fixture
def log_output() -> Iterator[Captured]:
    """Every record, DEBUG up, from every logger, through the JSON formatter."""
    captured = Captured()
    handler = logging.StreamHandler(captured.stream)
    handler.setFormatter(logs.formatter("json"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_each_request_logs_one_json_line_with_its_request_id(
    db: None, log_output: Captured
) -> None:
    response = Client().get("/api/me", headers={"x-request-id": "req-42.a:b"})
    assert response.status_code == 401
    assert response["X-Request-ID"] == "req-42.a:b"
    (line,) = log_output.events("http_request")
    assert line["request_id"] == "req-42.a:b"
    assert (line["route"], line["method"], line["status"]) == ("api/me", "GET", 401)
    assert line["level"] == "info"
    assert line["logger"] == "web.requests"
    # Django's own warning for the 401 is JSON too, with the same id.
    (django_line,) = [entry for entry in log_output.lines() if entry["logger"] == "django.request"]
    assert django_line["request_id"] == "req-42.a:b"


@pytest.mark.parametrize("header", ["", "has spaces", "x" * 129, 'quote"d', "new\nline"])
def test_an_insane_request_id_is_replaced(db: None, log_output: Captured, header: str) -> None:
    response = Client().get("/api/me", headers={"x-request-id": header})
    request_id = response["X-Request-ID"]
    assert request_id != header
    assert len(request_id) == 32
    assert log_output.events("http_request")[0]["request_id"] == request_id


def test_the_request_id_is_not_left_behind(db: None, log_output: Captured) -> None:
    Client().get("/api/me")
    logging.getLogger("tests").warning("after the request")
    (after,) = log_output.events("after the request")
    assert "request_id" not in after


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_connection_logs_with_its_connection_id(
    general: Room, alice: Any, log_output: Captured
) -> None:
    headers = await sync_to_async(token_headers)("alice")
    communicator, (connected, _) = await connect([*headers, (b"x-request-id", b"conn-7")])
    assert connected
    socket = ChatSocket(communicator)
    await socket.send({"type": "subscribe", "ref": "s", "room": "general"})
    await socket.until("subscribed")
    await communicator.disconnect()
    (opened,) = log_output.events("websocket_opened")
    (closed,) = log_output.events("websocket_closed")
    assert opened["connection_id"] == closed["connection_id"] == "conn-7"
    assert opened["user_id"] == alice.pk


@pytest.mark.django_db(transaction=True)
async def test_no_token_or_message_body_reaches_the_logs(
    general: Room, alice: Any, log_output: Captured
) -> None:
    headers = await sync_to_async(token_headers)("alice")
    token = headers[0][1].decode().removeprefix("Bearer ")
    body = "zebra-quartz-unique-body-7731"
    forged = "ct_forged-token-must-not-show-4412"

    def over_http() -> None:
        api = Client(headers={"authorization": f"Bearer {token}", "cookie": "sessionid=c00kie"})
        assert api.get("/api/me").status_code == 200
        sent = api.post(
            "/api/rooms/general/messages",
            {"body": f"{body}-http", "client_msg_id": "h1"},
            content_type="application/json",
        )
        assert sent.status_code in (200, 201), sent.content
        assert (
            Client(headers={"authorization": f"Bearer {forged}"}).get("/api/me").status_code == 401
        )

    await sync_to_async(over_http)()
    communicator, (connected, _) = await connect(headers)
    assert connected
    socket = ChatSocket(communicator)
    await socket.send({"type": "subscribe", "ref": "s", "room": "general", "since": 0})
    await socket.until("subscribed")
    await socket.send(
        {"type": "publish", "ref": "p", "room": "general", "body": body, "client_msg_id": "w1"}
    )
    got = {(await socket.recv())["type"] for _ in range(2)}
    assert got == {"ack", "message"}
    await communicator.disconnect()
    output = log_output.text
    assert log_output.events("http_request")
    assert log_output.events("websocket_closed")
    for secret in (token, forged, body, "c00kie"):
        assert secret not in output


def test_fields_named_like_secrets_are_blanked(log_output: Captured) -> None:
    import structlog

    structlog.get_logger("tests").info("oops", token="t0ken", body="b0dy", room="general")
    (line,) = log_output.events("oops")
    assert (line["token"], line["body"], line["room"]) == ("[redacted]", "[redacted]", "general")


def test_exceptions_are_logged_without_local_variables(log_output: Captured) -> None:
    def fail(password: str) -> None:
        raise ValueError("boom")

    secret = "-".join(["hunter2", "local"])  # not in the traceback's source lines
    try:
        fail(secret)
    except ValueError:
        logging.getLogger("tests").exception("it failed")
    (line,) = log_output.events("it failed")
    assert "ValueError: boom" in line["exception"]
    assert secret not in log_output.text


def test_log_format_is_json_or_console() -> None:
    record = logging.LogRecord("tests", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    assert orjson.loads(logs.formatter("json").format(record))["event"] == "hello you"
    assert "hello you" in logs.formatter("console").format(record)
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.formatter("xml")
