"""GET /metrics: every metric of project/metrics.py in Prometheus' text format.

Prometheus scrapes each pod directly; the Ingress must not route /metrics to the
internet (docs/operations.md). With METRICS_TOKEN set the scrape must also send
`Authorization: Bearer <METRICS_TOKEN>`.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.crypto import constant_time_compare
from prometheus_client import CONTENT_TYPE_LATEST

from project import metrics
from web.api import error_response
from web.auth import parse_bearer
from web.errors import ApiError, Unauthorized


def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        response = error_response(ApiError("use GET", code="method_not_allowed", status=405))
        response["Allow"] = "GET, HEAD"
        return response
    expected: str = settings.METRICS_TOKEN
    if expected:
        token = parse_bearer(request.headers.get("Authorization")) or ""
        if not constant_time_compare(token, expected):
            return error_response(Unauthorized("send Authorization: Bearer <METRICS_TOKEN>"))
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
