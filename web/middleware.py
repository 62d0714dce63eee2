"""The request id on every log line of a request, and each request's metrics and log line.

Both sit first in MIDDLEWARE (project/settings.py), so they see the whole request,
static files and errors included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponseBase

from project import logs, metrics

log = structlog.get_logger("web.requests")

# Probes and scrapes come every few seconds: logged only when they fail (or at DEBUG).
QUIET_ROUTES = frozenset({"healthz", "readyz", "metrics"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# The current request's query count; a list so the threads its queries run on (async views
# reach the database through sync_to_async) add to the same one through the copied context.
_queries: ContextVar[list[int] | None] = ContextVar("chat_request_queries", default=None)


def count_query(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
) -> Any:
    """A database execute wrapper: one more query for the request being served, if any."""
    counter = _queries.get()
    if counter is not None:
        counter[0] += 1
    return execute(sql, params, many, context)


def install_query_counter(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Put count_query on a database connection, for good.

    Not `with connection.execute_wrapper(...)` around the request: that wraps the
    connection of the thread the middleware runs on, and an async view's queries run on
    another thread's connection. Each thread's connection gets it once, when it connects.
    """
    if count_query not in connection.execute_wrappers:
        connection.execute_wrappers.append(count_query)


connection_created.connect(install_query_counter, dispatch_uid="chat_count_queries")


class _Middleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return self.call(request)

    def call(self, request: HttpRequest) -> HttpResponseBase:
        raise NotImplementedError

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        raise NotImplementedError


class RequestIdMiddleware(_Middleware):
    """Bind the request id (the caller's X-Request-ID if sane, else a new one) to every log
    line of the request, and answer it in X-Request-ID."""

    def call(self, request: HttpRequest) -> HttpResponseBase:
        request_id = _request_id(request)
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            response: HttpResponseBase = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = _request_id(request)
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            response: HttpResponseBase = await self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


def _request_id(request: HttpRequest) -> str:
    """The caller's X-Request-ID if sane, else a new id; kept on the request too, for the lines
    Django logs after the middleware returned (project/logs.py)."""
    request_id = logs.sane_id(request.headers.get("X-Request-ID"))
    request.request_id = request_id  # type: ignore[attr-defined]  # our attribute
    return request_id


class MetricsMiddleware(_Middleware):
    """Time each request and count its queries, by URL pattern (never the raw path: one
    series per route, not per room or user); then log one line for it."""

    def call(self, request: HttpRequest) -> HttpResponseBase:
        # The sync path queries on this thread, whose connection may predate the signal.
        install_query_counter(connection)
        start, counter = time.perf_counter(), [0]
        token = _queries.set(counter)
        try:
            response: HttpResponseBase = self.get_response(request)
        finally:
            _queries.reset(token)
        _record(request, response, time.perf_counter() - start, counter[0])
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        start, counter = time.perf_counter(), [0]
        token = _queries.set(counter)
        try:
            response: HttpResponseBase = await self.get_response(request)
        finally:
            _queries.reset(token)
        _record(request, response, time.perf_counter() - start, counter[0])
        return response


def route_of(request: HttpRequest) -> str:
    """The URL pattern that served the request: "api/rooms/<slug:slug>/messages"."""
    match = getattr(request, "resolver_match", None)
    if match is not None and match.route:
        return str(match.route)
    if request.path.startswith(settings.STATIC_URL):
        return "static"
    return "unmatched"  # 404s: unbounded paths must not become series


def _record(request: HttpRequest, response: HttpResponseBase, seconds: float, queries: int) -> None:
    route, status = route_of(request), response.status_code
    method = request.method if request.method in METHODS else "other"
    metrics.HTTP_DURATION.labels(route, method, str(status)).observe(seconds)
    metrics.DB_QUERIES.labels(route).observe(queries)
    quiet = route in QUIET_ROUTES and status < 400
    (log.debug if quiet else log.info)(
        "http_request",
        method=method,
        route=route,
        status=status,
        duration_ms=round(seconds * 1000, 2),
        queries=queries,
    )
