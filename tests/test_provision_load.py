"""`manage.py provision_load`: users, public rooms and working tokens for chat-loadtest."""

from __future__ import annotations

import json
import stat
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from web.actions import do_create_room
from web.models import ApiToken, Room, hash_token


def provision(*args: str) -> dict[str, list[str]]:
    out = StringIO()
    call_command("provision_load", *args, stdout=out, stderr=StringIO())
    data: dict[str, list[str]] = json.loads(out.getvalue())
    return data


def test_it_creates_users_public_rooms_and_one_token_each(db: None) -> None:
    data = provision("--users", "3", "--rooms", "2", "--prefix", "lt")
    assert data["rooms"] == ["lt-0", "lt-1"]
    assert list(Room.objects.filter(slug__startswith="lt-").values_list("slug", "private")) == [
        ("lt-0", False),
        ("lt-1", False),
    ]
    owners = [
        ApiToken.objects.get(key_hash=hash_token(token), revoked_at=None).user.get_username()
        for token in data["tokens"]
    ]
    assert owners == ["lt-0", "lt-1", "lt-2"]


def test_its_users_can_only_use_their_tokens(db: None) -> None:
    provision("--users", "1", "--rooms", "1", "--prefix", "lt")
    assert not get_user_model().objects.get(username="lt-0").has_usable_password()


def test_running_it_again_reuses_users_and_rooms_and_adds_tokens(db: None) -> None:
    first = provision("--users", "2", "--rooms", "1", "--prefix", "lt")
    second = provision("--users", "2", "--rooms", "1", "--prefix", "lt")
    assert get_user_model().objects.filter(username__startswith="lt-").count() == 2
    assert Room.objects.filter(slug__startswith="lt-").count() == 1
    assert set(first["tokens"]).isdisjoint(second["tokens"])
    assert ApiToken.objects.filter(user__username__startswith="lt-").count() == 4


def test_it_writes_the_tokens_file_for_its_owner_only(db: None, tmp_path: Path) -> None:
    out = tmp_path / "tokens.json"
    stdout = StringIO()
    call_command("provision_load", "--users", "2", "--rooms", "1", "--out", str(out), stdout=stdout)
    assert stdout.getvalue() == ""
    assert len(json.loads(out.read_text())["tokens"]) == 2
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_it_provisions_ten_thousand_users_in_bulk(
    db: None, django_assert_max_num_queries: Any
) -> None:
    # A few batched statements, not a query or three per user.
    with django_assert_max_num_queries(50):
        data = provision("--users", "10000", "--rooms", "100")
    assert len(set(data["tokens"])) == 10_000


def test_it_refuses_a_prefix_that_makes_invalid_names(db: None) -> None:
    with pytest.raises(CommandError, match="slug"):
        provision("--users", "1", "--rooms", "1", "--prefix", "Not Valid")


def test_it_refuses_to_take_over_a_private_room(alice: Any) -> None:
    do_create_room(alice, "lt-0", "Alice's", private=True)
    with pytest.raises(CommandError, match="private"):
        provision("--users", "1", "--rooms", "1", "--prefix", "lt")
