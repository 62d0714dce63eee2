"""HTTP authentication for the API: a session, or `Authorization: Bearer <token>`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from web.errors import Unauthorized
from web.models import ApiToken


def parse_bearer(header: str | None) -> str | None:
    """The token of an Authorization header's value, for HTTP and the websocket handshake alike.

    None when there is no header. "" when it names another scheme or no token: the caller
    refuses that, rather than falling back to the session as if no header had been sent.
    """
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class BearerCsrfExemptMiddleware:
    """Token-authenticated requests carry no ambient credentials, so CSRF does not apply."""

    async_capable = True
    sync_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]):
        self.get_response = get_response
        if iscoroutinefunction(self.get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if parse_bearer(request.headers.get("Authorization")) is not None:
            # The flag Django's CsrfViewMiddleware honours (as DRF's token auth relies on).
            request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
        return self.get_response(request)  # type: ignore[no-any-return]


async def aauthenticate(request: HttpRequest) -> Any:
    """The authenticated user, or Unauthorized. A bad token never falls back to the session."""
    token = parse_bearer(request.headers.get("Authorization"))
    if token is not None:
        user = await ApiToken.objects.auser_for(token) if token else None
        if user is None:
            raise Unauthorized("invalid or revoked token")
        return user
    user = await request.auser()
    if not user.is_authenticated:
        raise Unauthorized("log in or send Authorization: Bearer <token>")
    return user
