"""A user changed outside the actions loses their sockets on every pod, and stores nothing more.

An operator unticks "Active" in Django's User admin, someone saves the user in
`manage.py shell`, changes their password, or updates the row with raw SQL: each
on real pods, with the user's sockets open on both (docs/security.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django_otp.oath import TOTP
from websockets.exceptions import ConnectionClosed

from tests.e2e.http_client import Http, history, login
from tests.e2e.servers import Pod, SpawnPod, Stack
from tests.e2e.wsclient import WsClient, publish_frame
from tests.forms import form_fields

pytestmark = pytest.mark.e2e

CLOSED_WITHIN = 5.0  # "within a few seconds"; in practice one round trip through Redis
SESSION_ENDED = 4001


def shell(stack: Stack, code: str) -> None:
    stack.manage("shell", "-c", code)


def save_user(stack: Stack, name: str, change: str) -> None:
    """Change the user in `manage.py shell` and save(), as an operator at a shell does."""
    shell(
        stack,
        "from django.contrib.auth.models import User\n"
        f"user = User.objects.get(username={name!r})\n"
        f"{change}\n"
        "user.save()",
    )


def new_user(stack: Stack, *, staff: bool = False) -> tuple[str, str]:
    """A fresh user with a password (other tests' users stay active); their name and password."""
    name, password = f"u{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(16)
    make = "create_superuser" if staff else "create_user"
    shell(
        stack,
        "from django.contrib.auth.models import User\n"
        f"User.objects.{make}({name!r}, password={password!r})",
    )
    return name, password


@pytest.fixture(scope="module")
def operator(stack: Stack, pods: tuple[Pod, Pod]) -> Http:
    """A superuser logged in to the admin on pod A with their password and a TOTP code."""
    name, password = new_user(stack, staff=True)
    url = stack.manage("add_totp_device", name).strip()
    secret = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["secret"][0]
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    admin = Http(pods[0].url)
    page = admin.request_sync("GET", "/admin/login/", headers={"Accept": "text/html"})
    # As a person does: name and password first, which makes the page list their devices.
    for _ in range(2):
        fields = form_fields(page.text, "login-form")
        fields.update(username=[name], password=[password], otp_token=[f"{TOTP(key).token():06d}"])
        devices = re.findall(r'<option value="(otp_totp[^"]+)"', page.text)
        if devices:
            fields["otp_device"] = devices[:1]
        page = post_form(admin, "/admin/login/", fields)
        if page.status == 302:
            break
    assert page.status == 302, re.findall(r'errornote">([^<]*)', page.text)
    return admin


def post_form(client: Http, path: str, fields: dict[str, list[str]]) -> Any:
    return client.request_sync(
        "POST",
        path,
        data=urllib.parse.urlencode(fields, doseq=True).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "text/html"},
    )


class Victim:
    """A fresh user with a session socket on one pod and a token socket on the other."""

    def __init__(self, stack: Stack, pods: tuple[Pod, Pod]) -> None:
        self.stack, self.pods = stack, pods
        self.name, self.password = new_user(stack)
        self.token = stack.manage("issue_token", self.name).strip()
        self.sockets: dict[str, WsClient] = {}

    async def open(self, room: str) -> None:
        browser = login(self.pods[0].url, self.name, self.password)
        self.sockets["session"] = await WsClient.connect(
            self.pods[0].ws_url,
            cookie=browser.cookie_header(),
            origin=self.pods[0].origin,
            name=f"{self.name}'s session socket",
        )
        self.sockets["token"] = await WsClient.connect(
            self.pods[1].ws_url, token=self.token, name=f"{self.name}'s token socket"
        )
        for client in self.sockets.values():
            await client.subscribe(room)
            await client.publish(room, "before")

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.sockets.values()))


@pytest.fixture
async def victim(stack: Stack, pods: tuple[Pod, Pod], room: str) -> Any:
    user = Victim(stack, pods)
    await user.open(room)
    yield user
    await user.close()


async def assert_closed(*clients: WsClient) -> None:
    for client in clients:
        assert await client.wait_closed(within=CLOSED_WITHIN) == SESSION_ENDED, client.name


async def test_unticking_active_in_the_admin_closes_every_socket_and_stores_nothing_more(
    stack: Stack, operator: Http, victim: Victim, room: str, alice_api: Http
) -> None:
    # The operator finds the user in the admin's user list, and opens their change form.
    html = {"Accept": "text/html"}
    found = await operator.get(f"/admin/auth/user/?q={victim.name}", headers=html)
    (user_id,) = re.findall(r'href="/admin/auth/user/(\d+)/change/', found.text)
    change = f"/admin/auth/user/{user_id}/change/"
    page = await operator.get(change, headers=html)
    assert page.status == 200, page.text[:2000]
    fields = form_fields(page.text, "user_form")
    assert fields.pop("is_active") == ["on"]
    saved = await asyncio.to_thread(post_form, operator, change, fields)
    assert saved.status == 302, saved.text[:3000]
    # The change is committed: whatever the sockets still send must not be stored.
    late = [publish_frame(room, "late", f"late-{kind}") for kind in victim.sockets]
    for client, frame in zip(victim.sockets.values(), late, strict=True):
        with contextlib.suppress(ConnectionClosed):  # closed already: nothing to send into
            await client.send(frame)
    await assert_closed(*victim.sockets.values())
    stored = await history(alice_api, room)
    assert [m["body"] for m in stored if m["sender"] == victim.name] == ["before", "before"]


async def test_saving_the_user_inactive_in_a_shell_closes_every_socket(
    stack: Stack, victim: Victim
) -> None:
    await asyncio.to_thread(save_user, stack, victim.name, "user.is_active = False")
    await assert_closed(*victim.sockets.values())


async def test_a_new_password_closes_the_session_socket_and_not_the_token_one(
    stack: Stack, victim: Victim
) -> None:
    await asyncio.to_thread(
        save_user, stack, victim.name, "user.set_password('a new password for this test')"
    )
    await assert_closed(victim.sockets["session"])
    await victim.sockets["token"].ping()


@pytest.fixture
def quick_recheck_pods(spawn_pod: SpawnPod) -> tuple[Pod, Pod]:
    env = {"AUTH_RECHECK_SECONDS": "1"}
    return spawn_pod("pod-recheck-a", env), spawn_pod("pod-recheck-b", env)


@pytest.fixture
def database(stack: Stack) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(
        stack.env["DATABASE_URL"], password=stack.env["DATABASE_PASSWORD"] or None, autocommit=True
    ) as conn:
        yield conn


async def test_a_deactivation_by_raw_sql_closes_sockets_within_the_recheck_period(
    stack: Stack, quick_recheck_pods: tuple[Pod, Pod], room: str, database: Any
) -> None:
    victim = Victim(stack, quick_recheck_pods)
    await victim.open(room)
    try:
        # Behind Django's back: no signal, no event; only the periodic recheck can see it.
        database.execute(
            "UPDATE auth_user SET is_active = false WHERE username = %s", [victim.name]
        )
        # One period, plus a query and a round trip.
        for client in victim.sockets.values():
            assert await client.wait_closed(within=1 + 3) == SESSION_ENDED, client.name
    finally:
        await victim.close()
