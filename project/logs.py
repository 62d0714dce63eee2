"""Structured logs: one JSON object per line, with the request or connection id on every line.

LOGGING (project/settings.py) formats every record, the standard library's (Django,
uvicorn, Celery, ours) and structlog's alike, through `formatter` below:
LOG_FORMAT=json (the default unless DEBUG) prints one JSON object per line,
`console` readable lines for `make run`. Whatever is bound with
`structlog.contextvars` (the request id by web/middleware.py, the connection id by
realtime/consumers.py, the task by project/celery.py) is on every line logged
while it is bound, from any logger.

Never log secrets, tokens, cookies, Authorization headers or message bodies:
tracebacks are printed without local variables, and keys with those names are
blanked (`redact`) in case someone passes one.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.typing import Processor

REDACTED = frozenset(
    {"authorization", "cookie", "cookies", "password", "secret", "token", "body", "text"}
)
# What a caller's X-Request-ID may be (UUIDs, ULIDs, a load balancer's ids); else we make one.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_id() -> str:
    return uuid.uuid4().hex


def sane_id(value: str | bytes | None) -> str:
    """The caller's id (X-Request-ID) if it is sane, else a new one."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value and _SANE_ID.fullmatch(value):
        return value
    return new_id()


def bind_connection_id(scope: dict[str, Any]) -> None:
    """Put a websocket's id (its handshake's X-Request-ID if sane, else a new one) on every
    line logged in the connection's task and the tasks it starts."""
    headers = dict(scope.get("headers") or ())
    structlog.contextvars.bind_contextvars(connection_id=sane_id(headers.get(b"x-request-id")))


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Blank values under names that hold secrets or message bodies."""
    for key in REDACTED.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def request_id_of_record(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Django logs a request's 4xx and 5xx (django.request) after the middleware has returned:
    take the id from the request the record carries."""
    record = event_dict.get("_record")
    request_id = getattr(getattr(record, "request", None), "request_id", None)
    if request_id is not None and "request_id" not in event_dict:
        event_dict["request_id"] = request_id
    return event_dict


def _pre_chain() -> list[Processor]:
    """What every line gets, before it is rendered."""
    return [
        structlog.contextvars.merge_contextvars,
        request_id_of_record,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]


def formatter(style: str = "json") -> logging.Formatter:
    """The logging.Formatter LOGGING names ("()": "project.logs.formatter").

    Also points structlog's own loggers (structlog.get_logger) at the standard library, so
    both come out through this formatter.
    """
    renderer: Processor
    if style == "json":
        renderer = structlog.processors.JSONRenderer()
        # The traceback as a string field; never the frames' local variables.
        render_exc: list[Processor] = [structlog.processors.format_exc_info]
    elif style == "console":
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        render_exc = []
    else:
        raise ValueError(f"LOG_FORMAT must be json or console, not {style!r}")
    structlog.configure(
        processors=[*_pre_chain(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_pre_chain(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *render_exc,
            renderer,
        ],
    )


def time_queries(sender: Any, connection: Any, **kwargs: Any) -> None:
    """With DEBUG_SQL=1 (connected by web/apps.py): log each query of this database
    connection with its time, on every connection Django opens (connection_created)."""
    if log_query not in connection.execute_wrappers:
        connection.execute_wrappers.append(log_query)


def log_query(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    """A Django execute wrapper: one `sql` line per statement, after it ran (or failed).

    The statement as written, with its placeholders: parameters are not logged, since they
    may hold password hashes, token hashes or message bodies.
    """
    start = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        structlog.get_logger("project.sql").debug(
            "sql",
            sql=sql,
            duration_ms=round((time.perf_counter() - start) * 1000, 3),
            alias=context["connection"].alias,
            many=many,
        )
