"""The JSON envelope shared by every API view: auth, method check, body parsing, errors."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, DataError
from django.http import HttpRequest, HttpResponse
from django.http.request import RawPostDataException

from web.auth import aauthenticate
from web.errors import ApiError, BadRequest, TooLarge, Unavailable

logger = logging.getLogger(__name__)

View = Callable[..., Coroutine[Any, Any, HttpResponse]]


def json_response(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


def error_response(error: ApiError) -> HttpResponse:
    return json_response({"error": {"code": error.code, "message": error.message}}, error.status)


def method_not_allowed(methods: tuple[str, ...]) -> HttpResponse:
    allowed = ", ".join(methods)
    response = error_response(ApiError(f"use {allowed}", code="method_not_allowed", status=405))
    response["Allow"] = allowed
    return response


async def answer(call: Coroutine[Any, Any, HttpResponse]) -> HttpResponse:
    """The view's response, or its error as JSON: every API view's envelope."""
    try:
        return await call
    except ApiError as error:
        return error_response(error)
    except DataError:
        # A value the database cannot hold (SQLSTATE class 22) is the request's fault, not
        # an outage: `unavailable` would have the client retry it for ever.
        logger.warning("request data refused by the database", exc_info=True)
        return error_response(BadRequest("a value in the request cannot be stored"))
    except DatabaseError:
        logger.warning("database unavailable", exc_info=True)
        return error_response(Unavailable("the database is unavailable; retry later"))


def api_view(*methods: str) -> Callable[[View], View]:
    """Wrap an async view: authenticate, check the method, turn errors into JSON."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return method_not_allowed(methods)

            async def authenticated() -> HttpResponse:
                user = await aauthenticate(request)
                return await view(request, user, *args, **kwargs)

            return await answer(authenticated())

        return wrapper

    return decorate


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object body, or BadRequest/TooLarge."""
    try:
        raw = request.body
    except RequestDataTooBig:
        raise TooLarge(
            f"request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes"
        ) from None
    except RawPostDataException:
        # A multipart body, already streamed by the CSRF check looking for a form token.
        raise BadRequest("request body must be JSON, not form data") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def str_field(data: dict[str, Any], name: str, *, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return check_text(name, value)


def check_text(name: str, value: str) -> str:
    """The value, if PostgreSQL can store and compare it: text there cannot hold NUL."""
    if "\x00" in value:
        raise BadRequest(f"{name} must not contain NUL characters")
    return value


def bool_field(data: dict[str, Any], name: str, *, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value


def int_param(
    request: HttpRequest, name: str, *, default: int | None, lo: int, hi: int
) -> int | None:
    raw = request.GET.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value
