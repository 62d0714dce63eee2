"""The notifications API: a user's stream and read marker, and backends' notifies.

Parse -> access helper -> action -> response, as in web/views.py. No ORM calls here.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse

from web.access import anotifications_after, aservice_for_key
from web.actions import notifications as actions
from web.api import (
    View,
    answer,
    api_view,
    int_param,
    json_body,
    json_response,
    method_not_allowed,
)
from web.auth import parse_bearer
from web.errors import BadRequest, Unauthorized

logger = logging.getLogger(__name__)

MAX_PAGE = 200
MAX_SEQ = 2**63 - 1


@api_view("GET")
async def notifications(request: HttpRequest, user: Any) -> HttpResponse:
    limit = int_param(request, "limit", default=50, lo=1, hi=MAX_PAGE)
    after = int_param(request, "after", default=0, lo=0, hi=MAX_SEQ)
    assert limit is not None  # noqa: S101 -- it has a default
    assert after is not None  # noqa: S101 -- it has a default
    # One extra row tells whether there is more.
    page = await anotifications_after(user.pk, after, limit + 1)
    return json_response({"notifications": page[:limit], "has_more": len(page) > limit})


@api_view("POST")
async def mark_read(request: HttpRequest, user: Any) -> HttpResponse:
    up_to = json_body(request).get("up_to")
    if not isinstance(up_to, int) or isinstance(up_to, bool) or not 0 <= up_to <= MAX_SEQ:
        raise BadRequest("up_to must be a seq (an integer >= 0)")
    marker, unread = await sync_to_async(actions.do_mark_notifications_read)(user, up_to)
    return json_response({"up_to": marker, "unread": unread})


def service_view(view: View) -> View:
    """Like api_view, for backends: POST only, and only a service key authenticates.

    A user's session or token is no service key, and a service key is nobody's session or
    token (web/auth.py and realtime/auth.py look in ApiToken only).
    """

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method != "POST":
            return method_not_allowed(("POST",))

        async def authenticated() -> HttpResponse:
            raw = parse_bearer(request.headers.get("Authorization"))
            service = await aservice_for_key(raw) if raw else None
            if service is None:
                raise Unauthorized("send Authorization: Bearer <service key>")
            return await view(request, service, *args, **kwargs)

        return await answer(authenticated())

    return wrapper


@service_view
async def notify(request: HttpRequest, service: Any) -> HttpResponse:
    notify_request = actions.check_notify(json_body(request))
    result = await sync_to_async(actions.do_notify)(service, notify_request)
    response = json_response(result.response, status=result.status)
    if result.replayed:
        response["Idempotent-Replayed"] = "true"
    return response
