"""Websocket handshake authentication.

A client that sends `Authorization: Bearer <token>` is authenticated by the
token. Anyone else is a browser: its session cookie counts only when its Origin
is one of ALLOWED_HOSTS, which stops cross-site websocket hijacking. Whoever
fails both reaches the consumer anonymous and is refused with HTTP 403.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host

from web.models import ApiToken


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def origin_allowed(headers: list[tuple[bytes, bytes]]) -> bool:
    origin = next((value for name, value in headers if name == b"origin"), None)
    if not origin:
        return False
    scheme, _, netloc = origin.decode("latin-1").partition("://")
    if scheme not in ("http", "https") or not netloc:
        return False
    domain, _port = split_domain_port(netloc)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


class TokenOrOriginMiddleware(BaseMiddleware):  # type: ignore[misc]  # channels is untyped
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = scope.get("headers", [])
        token = bearer_token(headers)
        if token is not None:
            found = await ApiToken.objects.afor_raw(token) if token else None
            user = found.user if found else AnonymousUser()
            scope = {**scope, "user": user, "auth": "token", "token_id": found and found.pk}
        elif not origin_allowed(headers):
            scope = {**scope, "user": AnonymousUser(), "auth": "bad_origin"}
        else:
            scope = {**scope, "auth": "session"}
        return await super().__call__(scope, receive, send)


def WebsocketAuthStack(inner: Any) -> Any:
    return AuthMiddlewareStack(TokenOrOriginMiddleware(inner))
