"""The webhooks API: parse -> action -> response (docs/protocol.md, "Webhooks")."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse

from web.access import awebhooks_for_user
from web.actions.webhooks import do_create_webhook, do_delete_webhook
from web.api import api_view, json_body, json_response, str_field
from web.webhooks import webhook_json


@api_view("GET", "POST")
async def webhooks(request: HttpRequest, user: Any) -> HttpResponse:
    if request.method == "GET":
        hooks = await awebhooks_for_user(user)
        return json_response({"webhooks": [webhook_json(hook) for hook in hooks]})
    data = json_body(request)
    # The action resolves the URL's host (the SSRF check): blocking, so off the event loop.
    hook, secret = await sync_to_async(do_create_webhook)(
        user, str_field(data, "url"), data.get("kinds", [])
    )
    return json_response(webhook_json(hook, secret=secret), status=201)


@api_view("DELETE")
async def webhook(request: HttpRequest, user: Any, webhook_id: int) -> HttpResponse:
    await sync_to_async(do_delete_webhook)(user, webhook_id)
    return HttpResponse(status=204)
