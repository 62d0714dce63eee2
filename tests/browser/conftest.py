"""Fixtures for the browser tests: Debian's Chromium driven by Playwright, against real pods.

The pods are the end-to-end ones (tests/e2e/: uvicorn over a throwaway PostgreSQL and
Redis), serving static files collected into a temporary STATIC_ROOT with DEBUG off, as in
production: hashed names, far-future cache headers, the Content-Security-Policy on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, ViewportSize, expect

from tests.e2e.conftest import stack
from tests.e2e.http_client import Http, create_room_sync
from tests.e2e.servers import READY_TIMEOUT, Pod, Stack, manage

__all__ = ["stack"]  # the e2e stack fixture, shared with tests/e2e/ in one run

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
WAIT_MS = 10_000  # the longest any one expectation waits


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch, on Debian's Chromium (Playwright's download is not used)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def static_env(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`collectstatic` into a temporary STATIC_ROOT; pods given this env serve hashed files."""
    root = tmp_path_factory.mktemp("static")
    env = {"STATIC_ROOT": str(root), "STATIC_HASHED": "1"}
    manage({**stack.env, **env}, "collectstatic", "--noinput")
    assert (root / "staticfiles.json").exists(), "collectstatic wrote no manifest"
    return env


def start_web_pod(stack: Stack, static_env: dict[str, str], name: str) -> Pod:
    return stack.start_pod(name, env=static_env)


@pytest.fixture(scope="session")
def web_pod(stack: Stack, static_env: dict[str, str]) -> Iterator[Pod]:
    """The pod the browsers load pages from."""
    pod = start_web_pod(stack, static_env, "web")
    yield pod
    pod.stop()


def restart_on_same_port(pod: Pod) -> None:
    """Start a stopped pod again on its port: the pages' origin and socket URL stay the same."""
    # Pod.start picks a new port; a browser page must find the server where it left it.
    pod._spawn()
    pod.wait_ready(READY_TIMEOUT)


@pytest.fixture
def api(stack: Stack, web_pod: Pod) -> dict[str, Http]:
    """Token clients for alice, bob and charlie (no browser) on the web pod."""
    return {name: Http(web_pod.url, token=token) for name, token in stack.tokens.items()}


@pytest.fixture
def room(api: dict[str, Http]) -> str:
    """A fresh public room owned by Alice, Bob a member too (he has read it)."""
    slug = create_room_sync(api["alice"], prefix="web")
    answer = api["bob"].request_sync("POST", f"/api/rooms/{slug}/read", json_body={"seq": 0})
    assert answer.status == 200, answer.text
    return slug


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    """Browser contexts the test opens (separate cookie jars: separate people); all closed."""
    opened: list[BrowserContext] = []
    yield opened
    for context in opened:
        context.close()


class Person:
    """One person in their own browser context, logged in through the login page."""

    def __init__(self, context: BrowserContext, page: Page, name: str) -> None:
        self.context, self.page, self.name = context, page, name
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open_room(self, slug: str) -> None:
        self.page.get_by_role("navigation", name="Rooms").locator(f'a[data-room="{slug}"]').click()
        expect(self.page.locator("#room-title")).to_have_attribute("data-room", slug)

    def send(self, body: str) -> None:
        box = self.page.get_by_role("textbox", name="Message")
        box.fill(body)
        box.press("Enter")

    def messages(self) -> list[tuple[str, str]]:
        """(sender, body) of every message in the log, in order."""
        items = self.page.get_by_role("log").locator("li.message")
        return [
            (item.locator(".sender").inner_text(), item.locator(".body").inner_text())
            for item in items.all()
        ]

    def seqs(self) -> list[int]:
        values = self.page.get_by_role("log").locator('li[data-state="confirmed"]')
        return [int(v) for v in values.evaluate_all("items => items.map(i => i.dataset.seq)")]

    def expect_connected(self) -> None:
        expect(self.page.get_by_role("status")).to_have_text(re.compile(r"^connected"))


@pytest.fixture
def person(contexts: list[BrowserContext], browser: Browser, stack: Stack, web_pod: Pod) -> Any:
    """Open a browser context for a user, log in through the form and land on the app."""

    def open_as(
        name: str, *, pod: Pod | None = None, viewport: ViewportSize | None = None
    ) -> Person:
        base = (pod or web_pod).url
        context = browser.new_context(
            base_url=base, viewport=viewport or {"width": 1280, "height": 720}
        )
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        somebody = Person(context, page, name)
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill(name)
        page.get_by_label("Password").fill(stack.passwords[name])
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/(#.*)?$"))
        somebody.expect_connected()
        return somebody

    return open_as


def wait_until(condition: Any, timeout: float = WAIT_MS / 1000, what: str = "condition") -> None:
    """Poll something that offers no event to await (the server's HTTP view), bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot-chat.png"
