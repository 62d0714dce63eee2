"""Errors that actions and access helpers raise, shared by the HTTP API and the websocket."""

from __future__ import annotations


class ApiError(Exception):
    """A client-facing error with a protocol code and an HTTP status."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    code = "bad_request"
    status = 400


class Unauthorized(ApiError):
    code = "unauthorized"
    status = 401


class Forbidden(ApiError):
    code = "forbidden"
    status = 403


class NotFound(ApiError):
    code = "not_found"
    status = 404


class Conflict(ApiError):
    code = "conflict"
    status = 409


class TooLarge(ApiError):
    code = "too_large"
    status = 413


class RateLimited(ApiError):
    code = "rate_limited"
    status = 429


class Unavailable(ApiError):
    code = "unavailable"
    status = 503
