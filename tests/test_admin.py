"""The admin shows everything read-only and revokes tokens through the action."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from web import actions
from web.models import ApiToken


@pytest.mark.parametrize("model", ["room", "membership", "message", "apitoken"])
def test_the_admin_lists_every_model(admin_client: Client, model: str) -> None:
    assert admin_client.get(f"/admin/web/{model}/").status_code == 200


def test_rooms_cannot_be_added_in_the_admin(admin_client: Client) -> None:
    assert admin_client.get("/admin/web/room/add/").status_code == 403


def test_the_admin_revokes_tokens(admin_client: Client, alice: Any) -> None:
    actions.do_issue_token("alice")
    token = ApiToken.objects.get(user=alice)
    response = admin_client.post(
        "/admin/web/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}
    )
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
