"""The probes' endpoints: /healthz (alive) and /readyz (should get traffic).

In project/, not web/: readiness knows the serving process (its drain, the connections it
checks with), which the domain must not import (docs/architecture.md, `lint-imports`).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from realtime.health import readiness
from web.api import json_response


async def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. It checks nothing else, so a database outage never gets
    every pod restarted."""
    return json_response({"ok": True})


async def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 while PostgreSQL and Redis (if configured) answer and the process is not
    draining; else 503, naming what failed. Answers within about a second whatever hangs."""
    report = await readiness()
    return json_response(report, status=200 if report["ready"] else 503)
