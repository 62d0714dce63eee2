"""Service keys: issued by a command, stored hashed, revoked in the admin, good for notify only."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from tests.test_consumers import connect
from web.models import ServiceKey, hash_token

pytestmark = pytest.mark.django_db


def issue(name: str) -> str:
    out = StringIO()
    call_command("issue_service_key", name, stdout=out)
    return out.getvalue()


def test_the_command_prints_a_new_key_and_nothing_else(db: None) -> None:
    printed = issue("billing")
    raw = printed.strip()
    assert printed == raw + "\n"
    assert raw.startswith("sk_")
    assert len(raw) > 40
    (key,) = ServiceKey.objects.all()
    assert (key.name, key.key_hash, key.revoked_at) == ("billing", hash_token(raw), None)
    assert raw not in str(ServiceKey.objects.values())  # only the hash is stored
    with pytest.raises(CommandError):
        issue("   ")


def test_a_service_key_is_no_users_credential(client: Client, alice: Any) -> None:
    auth: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {issue('billing').strip()}"}
    assert client.get("/api/me", **auth).status_code == 401
    assert client.get("/api/rooms", **auth).status_code == 401
    assert client.get("/api/notifications", **auth).status_code == 401
    assert client.get("/api/rooms/general/messages", **auth).status_code == 401


@pytest.mark.django_db(transaction=True)
async def test_a_service_key_opens_no_socket(db: None) -> None:
    from asgiref.sync import sync_to_async

    raw = (await sync_to_async(issue)("billing")).strip()
    _, (connected, _) = await connect([(b"authorization", f"Bearer {raw}".encode())])
    assert not connected


def test_the_admin_revokes_service_keys(admin_client: Client) -> None:
    raw = issue("billing").strip()
    key = ServiceKey.objects.get()
    response = admin_client.post(
        "/admin/web/servicekey/", {"action": "revoke", "_selected_action": [key.pk]}
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    answer = Client().post(
        "/api/notify",
        {"users": ["root"], "kind": "k"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert answer.status_code == 401


def test_the_admin_shows_notifications_read_only(admin_client: Client) -> None:
    assert admin_client.get("/admin/web/notification/").status_code == 200
    assert admin_client.get("/admin/web/notification/add/").status_code == 403
    assert admin_client.get("/admin/web/servicekey/add/").status_code == 403
