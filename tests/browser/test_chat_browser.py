"""The chat in real Chromium: two people, live messages, presence, typing, unread, resume."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOT, restart_on_same_port, start_web_pod, wait_until
from tests.e2e.http_client import Http, create_room_sync
from tests.e2e.servers import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

XSS = "<img src=x onerror=alert(1)>"


def message(body: str, client_msg_id: str) -> dict[str, str]:
    return {"body": body, "client_msg_id": client_msg_id}


def test_bob_sees_alices_message_live_and_hers_is_confirmed(
    person: Any, room: str, tmp_path: Path
) -> None:
    alice, bob = person("alice"), person("bob")
    alice.open_room(room)
    bob.open_room(room)

    alice.send("hello bob\nsecond line")
    # Hers shows at once, then is confirmed by the ack; his arrives live.
    mine = alice.page.get_by_role("log").locator("li.message").last
    expect(mine).to_have_attribute("data-state", "confirmed")
    expect(bob.page.get_by_role("log")).to_contain_text("hello bob")
    bob.send("hi alice")
    expect(alice.page.get_by_role("log")).to_contain_text("hi alice")

    expected = [("alice", "hello bob\nsecond line"), ("bob", "hi alice")]
    assert alice.messages() == expected
    assert bob.messages() == expected
    assert alice.seqs() == bob.seqs() == [1, 2]
    assert not alice.errors
    assert not bob.errors

    alice.page.get_by_role("textbox", name="Message").fill("a draft")
    # The committed screenshot (docs/screenshot-chat.png) only when asked for.
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "chat.png"
    bob.page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000


def test_bob_sees_alice_online_and_typing(person: Any, room: str) -> None:
    alice, bob = person("alice"), person("bob")
    alice.open_room(room)
    bob.open_room(room)

    presence = bob.page.locator("#presence")
    expect(presence.get_by_text("alice", exact=True)).to_be_visible()
    alice.page.get_by_role("textbox", name="Message").press_sequentially("hel")
    expect(bob.page.locator("#typing")).to_have_text("alice is typing…")
    # Her message ends the notice at once.
    alice.page.get_by_role("textbox", name="Message").press("Enter")
    expect(bob.page.get_by_role("log")).to_contain_text("hel")
    expect(bob.page.locator("#typing")).to_have_text("")

    alice.context.close()
    expect(presence.get_by_text("alice", exact=True)).to_have_count(0)


def test_bobs_unread_badge_counts_and_clears_when_he_reads_in_another_tab(
    person: Any, room: str, api: dict[str, Http]
) -> None:
    bob = person("bob")  # on general
    badge = bob.page.get_by_role("navigation", name="Rooms").locator(
        f'a[data-room="{room}"] .badge'
    )
    for n in range(2):
        answer = api["alice"].request_sync(
            "POST",
            f"/api/rooms/{room}/messages",
            json_body={"body": f"m{n}", "client_msg_id": f"u{n}"},
        )
        assert answer.status == 201, answer.text
    expect(badge).to_have_text(re.compile(r"^2"))

    # He reads the room in a second tab: the first tab's badge clears too.
    other = bob.context.new_page()
    other.goto(f"/#{room}")
    expect(other.get_by_role("log")).to_contain_text("m1")
    expect(badge).to_have_count(0)
    rooms = api["bob"].request_sync("GET", "/api/rooms").json()["rooms"]
    assert next(r for r in rooms if r["slug"] == room)["unread"] == 0


def test_a_message_body_and_a_room_title_are_shown_as_text(
    person: Any, api: dict[str, Http]
) -> None:
    slug = create_room_sync(api["alice"], prefix="xss")
    answer = api["alice"].request_sync(
        "POST", "/api/rooms", json_body={"slug": slug + "-t", "title": XSS, "private": False}
    )
    assert answer.status == 201, answer.text
    alice, bob = person("alice"), person("bob")
    alice.open_room(slug)
    bob.open_room(slug)
    alice.send(XSS)

    log = bob.page.get_by_role("log")
    expect(log.locator("li.message .body")).to_have_text([XSS])
    assert log.locator("img").count() == 0
    nav = bob.page.get_by_role("navigation", name="Rooms")
    expect(nav.locator(f'a[data-room="{slug}-t"]')).to_contain_text(XSS)
    assert nav.locator("img").count() == 0
    assert bob.dialogs == []
    assert alice.dialogs == []


def test_a_server_restart_shows_reconnecting_then_every_message_once_in_order(
    person: Any, room: str, stack: Stack, static_env: dict[str, str], api: dict[str, Http]
) -> None:
    pod = start_web_pod(stack, static_env, "restarted")
    try:
        alice = person("alice", pod=pod)
        alice.open_room(room)
        alice.send("before 1")
        alice.send("before 2")
        log = alice.page.get_by_role("log")
        expect(log.locator('li[data-state="confirmed"]')).to_have_count(2)

        pod.stop()
        expect(alice.page.get_by_role("status")).to_have_text(re.compile(r"^reconnecting"))
        # Sent through another process while hers is away, then one she writes meanwhile.
        for n in range(3):
            answer = api["bob"].request_sync(
                "POST",
                f"/api/rooms/{room}/messages",
                json_body={"body": f"away {n}", "client_msg_id": f"away-{n}"},
            )
            assert answer.status == 201, answer.text
        alice.send("written offline")
        expect(log.locator('li[data-state="pending"]')).to_have_text(re.compile("written offline"))

        restart_on_same_port(pod)
        # The backoff may have grown to several seconds while the server was away.
        expect(alice.page.get_by_role("status")).to_have_text(
            re.compile(r"^connected"), timeout=25_000
        )
        expect(log.locator('li[data-state="confirmed"]')).to_have_count(6)
        assert alice.messages() == [
            ("alice", "before 1"),
            ("alice", "before 2"),
            ("bob", "away 0"),
            ("bob", "away 1"),
            ("bob", "away 2"),
            ("alice", "written offline"),
        ]
        assert alice.seqs() == [1, 2, 3, 4, 5, 6]
        # The retried publish was stored once.
        stored = api["alice"].request_sync("GET", f"/api/rooms/{room}/messages").json()
        assert [m["body"] for m in stored["messages"]].count("written offline") == 1
    finally:
        pod.stop()


def test_older_history_loads_on_scroll_up_with_no_gap_and_no_duplicate(
    person: Any, room: str, api: dict[str, Http]
) -> None:
    total = 130
    for n in range(1, total + 1):
        answer = api["alice"].request_sync(
            "POST",
            f"/api/rooms/{room}/messages",
            json_body=message(f"n{n}", f"h{n}"),
        )
        assert answer.status == 201, answer.text
    bob = person("bob")
    bob.open_room(room)
    log = bob.page.get_by_role("log")
    expect(log.locator('li[data-state="confirmed"]').first).to_have_attribute("data-seq", "81")

    def scrolled_to_the_start() -> bool:
        log.evaluate("log => { log.scrollTop = 0; log.dispatchEvent(new Event('scroll')); }")
        first = log.locator('li[data-state="confirmed"]').first.get_attribute("data-seq")
        return bool(first == "1")

    wait_until(scrolled_to_the_start, what="the first message after scrolling up")
    assert bob.seqs() == list(range(1, total + 1))
    assert [body for _, body in bob.messages()] == [f"n{n}" for n in range(1, total + 1)]


def test_a_mention_rings_bobs_bell_with_a_toast_and_the_list(person: Any, room: str) -> None:
    alice, bob = person("alice"), person("bob")
    alice.open_room(room)
    alice.send("@bob look at this")
    bell = bob.page.locator("#bell")
    expect(bell).to_contain_text("1 unread")
    expect(bob.page.locator("#toasts")).to_contain_text("alice mentioned you")
    bell.click()
    expect(bob.page.locator("#notifications-list")).to_contain_text("@bob look at this")
    # Opening the list reads it.
    expect(bell).not_to_contain_text("unread")
