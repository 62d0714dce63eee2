"""Websocket handshake authentication, in one middleware layer.

A client that sends `Authorization: Bearer <token>` is authenticated by the
token. Anyone else is a browser: its session cookie counts only when its Origin
is one of ALLOWED_HOSTS, which stops cross-site websocket hijacking. Whoever
fails both reaches the consumer anonymous and is refused with HTTP 403.

Why not Channels' AuthMiddlewareStack: it is three layers, each copying the
scope, and its SessionMiddleware wraps `send` (to save sessions a websocket
never changes), which hides the server's connection from the fan-out's direct
writer (realtime/wire.py). This layer reads the session and copies the scope
once.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from importlib import import_module
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.contrib.auth import aget_user
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host

from web.auth import parse_bearer
from web.models import ApiToken


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    value = _header(headers, b"authorization")
    return parse_bearer(value.decode("latin-1") if value is not None else None)


def origin_allowed(headers: list[tuple[bytes, bytes]]) -> bool:
    origin = _header(headers, b"origin")
    if not origin:
        return False
    scheme, _, netloc = origin.decode("latin-1").partition("://")
    if scheme not in ("http", "https") or not netloc:
        return False
    domain, _port = split_domain_port(netloc)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def session_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    raw = _header(headers, b"cookie")
    if raw is None:
        return None
    try:
        cookies = SimpleCookie(raw.decode("latin-1"))
    except CookieError:
        return None
    morsel = cookies.get(settings.SESSION_COOKIE_NAME)
    return morsel.value if morsel else None


async def user_for_session(key: str) -> Any:
    """The user a session cookie belongs to (AnonymousUser if none), as Django checks it."""
    engine = import_module(settings.SESSION_ENGINE)
    session = engine.SessionStore(key)
    # aget_user reads only request.session; the session hash check comes with it.
    return await aget_user(SimpleNamespace(session=session))  # type: ignore[arg-type]


async def still_signed_in(user_id: Any, token_id: int | None, session_key: str | None) -> bool:
    """Whether a socket's credentials still hold, checked the way its handshake was.

    A token: not revoked, and its user active. A session: it still exists and Django
    still accepts it for that user (active, and the session's auth hash matching the
    current password; a changed password ends every other session, as it does for HTTP).
    """
    if token_id is not None:
        return await ApiToken.objects.filter(
            pk=token_id, user_id=user_id, revoked_at__isnull=True, user__is_active=True
        ).aexists()
    if session_key is not None:
        user = await user_for_session(session_key)
        return bool(user.is_authenticated) and user.pk == user_id
    return False


class WebsocketAuthMiddleware:
    def __init__(self, inner: Any):
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = scope.get("headers", [])
        token = bearer_token(headers)
        user: Any = AnonymousUser()
        extra: dict[str, Any] = {}
        if token is not None:
            found = await ApiToken.objects.afor_raw(token) if token else None
            if found is not None:
                user, extra = found.user, {"auth": "token", "token_id": found.pk}
        elif origin_allowed(headers):
            key = session_key(headers)
            if key:
                user, extra = await user_for_session(key), {"auth": "session", "session_key": key}
        # Added to the server's own scope rather than a copy (ASGI asks middleware to copy,
        # lest changes leak upstream): that dict is this one connection's, uvicorn reads none
        # of these keys, and a copy would be kept for the socket's life (about 700 bytes).
        scope["user"] = user
        scope.update(extra)
        return await self.inner(scope, receive, send)
