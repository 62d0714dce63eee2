"""A small HTTP client for the pods, with the login and room API calls the tests share."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message as HeaderMessage
from typing import IO, Any

HTTP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names lowercased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx answers to the caller: a login's 302 is the answer we check."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HeaderMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class Http:
    """A small HTTP client (urllib, no proxies, no redirects) with a cookie jar.

    Async methods run the blocking call in a thread so websocket readers keep running.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        jar: http.cookiejar.CookieJar | None = None,
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.jar = jar if jar is not None else http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPCookieProcessor(self.jar),
            _NoRedirect(),
        )

    def on(self, base_url: str) -> Http:
        """The same credentials (token or session cookies) against another pod."""
        return Http(base_url, token=self.token, jar=self.jar)

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar if c.value is not None)

    def request_sync(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> Response:
        all_headers = {"Accept": "application/json"}
        if self.token is not None:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        all_headers.update(headers or {})
        request = urllib.request.Request(  # noqa: S310 -- always a loopback http:// URL
            self.base_url + path, data=data, method=method, headers=all_headers
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return Response(response.status, _headers(response.headers), response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, _headers(error.headers), error.read())

    async def request(self, method: str, path: str, **kwargs: Any) -> Response:
        return await asyncio.to_thread(self.request_sync, method, path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Response:
        return await self.request("POST", path, json_body=json_body, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)


def _headers(message: HeaderMessage) -> dict[str, str]:
    return {name.lower(): value for name, value in message.items()}


def login(base_url: str, username: str, password: str) -> Http:
    """Log in through the real login form, the way a browser does; the jar holds the session."""
    client = Http(base_url)
    page = client.request_sync("GET", "/accounts/login/", headers={"Accept": "text/html"})
    assert page.status == 200, page.text
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert match, "the login page has no CSRF token"
    answer = client.request_sync(
        "POST",
        "/accounts/login/",
        form={"username": username, "password": password, "csrfmiddlewaretoken": match[1]},
        headers={"Accept": "text/html"},
    )
    assert answer.status == 302, f"login of {username} failed: {answer.status} {answer.text[:300]}"
    assert client.cookie("sessionid"), "login set no session cookie"
    return client


# API helpers shared by the tests.


def unique_slug(prefix: str = "e2e") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_room_sync(client: Http, *, private: bool = False, prefix: str = "e2e") -> str:
    """A fresh room owned by the client's user; each test gets its own."""
    slug = unique_slug(prefix)
    answer = client.request_sync(
        "POST", "/api/rooms", json_body={"slug": slug, "title": slug, "private": private}
    )
    assert answer.status == 201, answer.text
    return slug


async def last_seq(client: Http, slug: str) -> int:
    """The room's last_seq as GET /api/rooms reports it."""
    answer = await client.get("/api/rooms")
    assert answer.status == 200, answer.text
    room = next((r for r in answer.json()["rooms"] if r["slug"] == slug), None)
    assert room is not None, f"{slug} is not in the user's rooms"
    value: int = room["last_seq"]
    return value


async def history(client: Http, slug: str, after: int = 0) -> list[dict[str, Any]]:
    """Every stored message after `after`, paging through GET /api/rooms/<slug>/messages."""
    messages: list[dict[str, Any]] = []
    while True:
        answer = await client.get(f"/api/rooms/{slug}/messages?after={after}&limit=200")
        assert answer.status == 200, answer.text
        page = answer.json()
        messages.extend(page["messages"])
        if not page["has_more"]:
            return messages
        after = page["messages"][-1]["seq"]
