"""The pages around the chat: accessibility, the CSP, cached static files, sign-up, a phone."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]  # no stubs
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.conftest import WAIT_MS
from tests.e2e.http_client import Http, login
from tests.e2e.servers import Pod, Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

FAR_FUTURE = "max-age=315360000"


def serious_violations(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def new_page(browser: Browser, contexts: list[BrowserContext], pod: Pod, **options: Any) -> Page:
    context = browser.new_context(base_url=pod.url, **options)
    context.set_default_timeout(WAIT_MS)
    contexts.append(context)
    return context.new_page()


def test_the_login_page_and_the_chat_view_have_no_serious_accessibility_violations(
    browser: Browser, contexts: list[BrowserContext], web_pod: Pod, person: Any, room: str
) -> None:
    page = new_page(browser, contexts, web_pod)
    page.goto("/accounts/login/")
    assert serious_violations(page) == []

    alice = person("alice")
    alice.open_room(room)
    alice.send("hello")
    expect(alice.page.get_by_role("log").locator('li[data-state="confirmed"]')).to_have_count(1)
    assert serious_violations(alice.page) == []


def test_every_control_is_reached_by_keyboard_in_order(person: Any, room: str) -> None:
    alice = person("alice")
    alice.open_room(room)
    alice.page.reload()  # focus starts at the top of the page again
    alice.expect_connected()
    # The room list is fetched on its own after the page loads; tab only once it is there.
    rooms = alice.page.get_by_role("navigation", name="Rooms")
    expect(rooms.locator(f'a[data-room="{room}"]')).to_be_visible()
    reached: list[str] = []
    for _ in range(40):
        alice.page.keyboard.press("Tab")
        name = alice.page.evaluate(
            "() => { const e = document.activeElement;"
            " return e.id || e.dataset.room || e.textContent.trim(); }"
        )
        reached.append(name)
        if name == "message":
            break
    assert "message" in reached, reached
    # The header, then the rooms, then the new-room form, then the messages and the composer.
    wanted = ("bell", room, "new-room-slug", "log", "message")
    assert set(wanted) <= set(reached), reached
    order = [reached.index(x) for x in wanted]
    assert order == sorted(order), reached


def test_a_room_link_keeps_the_keyboard_focus_when_the_list_is_redrawn(
    person: Any, room: str, api: dict[str, Http]
) -> None:
    bob = person("bob")  # on general; the room is in his list
    link = bob.page.get_by_role("navigation", name="Rooms").locator(f'a[data-room="{room}"]')
    link.focus()
    expect(link).to_be_focused()
    # A message in that room redraws the list with its unread badge.
    answer = api["alice"].request_sync(
        "POST", f"/api/rooms/{room}/messages", json_body={"body": "hi", "client_msg_id": "f1"}
    )
    assert answer.status == 201, answer.text
    expect(link.locator(".badge")).to_have_text(re.compile(r"^1"))
    expect(link).to_be_focused()


def test_pages_carry_a_csp_that_forbids_inline_scripts_and_allows_the_socket(
    stack: Stack, web_pod: Pod, person: Any
) -> None:
    session = login(web_pod.url, "alice", stack.passwords["alice"])
    anonymous = Http(web_pod.url)
    for client, path in (
        (anonymous, "/accounts/login/"),
        (anonymous, "/accounts/signup/"),
        (session, "/"),
    ):
        page = client.request_sync("GET", path, headers={"Accept": "text/html"})
        assert page.status == 200, (path, page.status)
        policy = page.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'", policy
        assert "unsafe" not in policy, policy
        assert directives["connect-src"] == "'self'", policy
        assert directives["object-src"] == "'none'", policy
        # Nothing inline to forbid in the first place.
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), path
        assert not re.search(r"\son[a-z]+\s*=", page.text), path
    # With that policy on, the page's websocket connects.
    person("alice").expect_connected()


def test_static_files_have_hashed_names_and_far_future_cache_headers(
    stack: Stack, web_pod: Pod
) -> None:
    session = login(web_pod.url, "alice", stack.passwords["alice"])
    page = session.request_sync("GET", "/", headers={"Accept": "text/html"})
    match = re.search(r'<script type="module" src="(/static/app\.[0-9a-f]{12}\.js)"', page.text)
    assert match, page.text
    script = Http(web_pod.url).request_sync("GET", match[1])
    assert script.status == 200
    assert FAR_FUTURE in script.headers["cache-control"], script.headers
    assert "immutable" in script.headers["cache-control"], script.headers
    # The modules it imports are named by their hashed names too.
    imports = re.findall(r'from "\./([^"]+)"', script.text)
    assert imports, script.text[:300]
    assert all(re.fullmatch(r"\w+\.[0-9a-f]{12}\.js", name) for name in imports), imports
    module = Http(web_pod.url).request_sync("GET", f"/static/{imports[0]}")
    assert module.status == 200
    assert FAR_FUTURE in module.headers["cache-control"]


def test_a_newcomer_signs_up_lands_in_the_chat_and_logs_out(
    browser: Browser, contexts: list[BrowserContext], web_pod: Pod
) -> None:
    page = new_page(browser, contexts, web_pod)
    page.goto("/accounts/login/")
    page.get_by_role("link", name="Create an account").click()
    name = f"newcomer-{uuid.uuid4().hex[:8]}"
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password", exact=True).fill("a long enough passphrase 42")
    page.get_by_label("Password confirmation").fill("a long enough passphrase 42")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^connected"))
    expect(page.locator("#me")).to_have_text(name)
    expect(page.locator("#room-title")).to_have_attribute("data-room", "general")

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in to chat")).to_be_visible()


def test_the_chat_works_on_a_phone_sized_screen(person: Any, room: str) -> None:
    alice = person("alice", viewport={"width": 390, "height": 844})
    page = alice.page
    nav = page.get_by_role("navigation", name="Rooms")
    expect(nav).to_be_hidden()
    page.get_by_role("button", name="Rooms").click()
    expect(nav).to_be_visible()
    alice.open_room(room)
    expect(nav).to_be_hidden()
    alice.send("from a phone")
    expect(page.get_by_role("log").locator('li[data-state="confirmed"]')).to_have_count(1)
    box = page.get_by_role("textbox", name="Message").bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 390
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
