"""The JSON API: parse -> access helper -> action -> response. No ORM calls here."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import ensure_csrf_cookie

from web import actions
from web.access import (
    aget_room_for_user,
    ahistory_page,
    anotification_counts,
    aonline_users,
    arooms_for_user,
    room_json,
)
from web.api import (
    api_view,
    bool_field,
    check_text,
    int_param,
    json_body,
    json_response,
    str_field,
)
from web.errors import BadRequest

MAX_PAGE = 200
MAX_SEQ = 2**63 - 1


@ensure_csrf_cookie
@api_view("GET")
async def me(request: HttpRequest, user: Any) -> HttpResponse:
    _last_seq, unread = await anotification_counts(user.pk)
    return json_response({"username": user.get_username(), "notifications_unread": unread})


@api_view("GET", "POST")
async def rooms(request: HttpRequest, user: Any) -> HttpResponse:
    if request.method == "GET":
        return json_response({"rooms": await arooms_for_user(user)})
    data = json_body(request)
    room = await sync_to_async(actions.do_create_room)(
        user,
        str_field(data, "slug"),
        str_field(data, "title", default=str(data.get("slug", ""))),
        bool_field(data, "private", default=False),
    )
    return json_response(room_json(room), status=201)


@api_view("POST", "DELETE")
async def members(request: HttpRequest, user: Any, slug: str, username: str = "") -> HttpResponse:
    room = await aget_room_for_user(user, slug)
    if username:
        username = check_text("username", username)
    else:
        username = str_field(json_body(request), "username")
    if request.method == "POST":
        await sync_to_async(actions.do_add_member)(user, room, username)
        return json_response({"room": room.slug, "username": username}, status=201)
    await sync_to_async(actions.do_remove_member)(user, room, username)
    return HttpResponse(status=204)


@api_view("GET", "POST")
async def messages(request: HttpRequest, user: Any, slug: str) -> HttpResponse:
    room = await aget_room_for_user(user, slug)
    if request.method == "POST":
        data = json_body(request)
        sent = await sync_to_async(actions.do_send_message)(
            user, room, str_field(data, "body"), str_field(data, "client_msg_id")
        )
        return json_response(sent.frame, status=201 if sent.created else 200)
    limit = int_param(request, "limit", default=50, lo=1, hi=MAX_PAGE)
    after = int_param(request, "after", default=None, lo=0, hi=MAX_SEQ)
    before = int_param(request, "before", default=None, lo=1, hi=MAX_SEQ)
    assert limit is not None  # noqa: S101 -- it has a default
    if after is not None and before is not None:
        raise BadRequest("give after or before, not both")
    # One extra row tells whether there is more. Neither after nor before: the newest page,
    # as a client opening the room wants it. From the replica when it is as fresh as the
    # page needs (web/access.py).
    page = await ahistory_page(room, after, before, limit + 1)
    has_more = len(page) > limit
    if has_more:
        page = page[:limit] if after is not None else page[1:]
    return json_response({"messages": page, "has_more": has_more})


@api_view("POST")
async def mark_read(request: HttpRequest, user: Any, slug: str) -> HttpResponse:
    room = await aget_room_for_user(user, slug)
    seq = json_body(request).get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise BadRequest("seq must be an integer")
    marker = await sync_to_async(actions.do_mark_read)(user, room, seq)
    return json_response({"room": room.slug, "last_read_seq": marker})


@api_view("GET")
async def presence(request: HttpRequest, user: Any, slug: str) -> HttpResponse:
    room = await aget_room_for_user(user, slug)
    return json_response({"room": room.slug, "online": await aonline_users(room)})


class LogoutView(auth_views.LogoutView):
    """Django's logout, then the sockets that session opened are closed."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user, session_key = request.user, request.session.session_key
        response = super().post(request, *args, **kwargs)
        if user.is_authenticated:
            actions.do_end_session(user, session_key)
        return response
