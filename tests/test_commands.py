"""Management commands: issue_token prints only the token; demo_users prints how to log in."""

from __future__ import annotations

import re
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from web.models import ApiToken


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_issue_token_prints_only_a_fresh_token(alice: Any) -> None:
    first, second = run("issue_token", "alice"), run("issue_token", "alice")
    assert re.fullmatch(r"ct_[A-Za-z0-9_-]{43}\n", first)
    assert first != second
    assert ApiToken.objects.filter(user=alice).count() == 2


def test_issue_token_creates_the_user_only_when_asked(db: None) -> None:
    with pytest.raises(CommandError, match="--create"):
        run("issue_token", "zed")
    assert run("issue_token", "zed", "--create").startswith("ct_")
    assert get_user_model().objects.filter(username="zed").exists()


def test_demo_users_prints_passwords_that_work(db: None) -> None:
    output = run("demo_users")
    found = re.findall(r"(alice|bob)\s+password: (\S+)\s+token: (ct_\S+)", output)
    assert [name for name, _, _ in found] == ["alice", "bob"]
    for name, password, _ in found:
        assert get_user_model().objects.get(username=name).check_password(password)
