"""JSON answers for Django's own 404 and CSRF failures under /api/."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views import defaults
from django.views.csrf import csrf_failure as html_csrf_failure

from web.api import error_response
from web.errors import ApiError, BadRequest, Forbidden, NotFound, TooLarge


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    # Django's own 400s: a form body the CSRF check could not parse (a bad multipart boundary,
    # too many fields, too big), or a disallowed Host header.
    if _is_api(request):
        if isinstance(exception, RequestDataTooBig):
            return error_response(TooLarge("request body is too large"))
        return error_response(BadRequest("malformed request"))
    return defaults.bad_request(request, exception or Exception())


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return error_response(Forbidden("permission denied"))
    return defaults.permission_denied(request, exception or Exception())


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return error_response(NotFound(f"no endpoint {request.path}"))
    return defaults.page_not_found(request, exception or Exception())


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return error_response(ApiError("internal error", code="internal", status=500))
    return defaults.server_error(request)


def csrf_failure(request: HttpRequest, reason: str = "", **kwargs: Any) -> HttpResponse:
    if _is_api(request):
        return error_response(Forbidden(f"CSRF check failed: {reason}"))
    return html_csrf_failure(request, reason=reason, **kwargs)
