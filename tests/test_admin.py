"""The admin shows everything read-only and revokes tokens through the action."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from web import actions
from web.models import ApiToken


@pytest.fixture
def admin_client(db: None) -> Client:
    """A superuser past both factors (tests/test_admin_otp.py logs in the real way)."""
    root = get_user_model().objects.create_superuser("root", password="root-password")
    device = TOTPDevice.objects.create(user=root, name="phone", confirmed=True)
    client = Client()
    client.force_login(root)
    # What django_otp.login() stores after a valid token: force_login for the second factor.
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


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
