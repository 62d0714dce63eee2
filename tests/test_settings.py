"""Secrets read by project/settings.py, from the environment or a NAME_FILE path.

(tests/test_deploy_checks.py runs the whole settings module in a subprocess.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from project.environment import secret

# FileAwareEnv caches what it read from a file per name for the process: one name per test.


def test_a_secret_file_loses_the_newline_it_ends_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    monkeypatch.setenv("CHAT_TEST_FILE_SECRET_FILE", str(path))
    assert secret("CHAT_TEST_FILE_SECRET") == "s3cret"


def test_a_secret_file_wins_over_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret"
    path.write_text("from-file")
    monkeypatch.setenv("CHAT_TEST_BOTH_SECRET", "from-env")
    monkeypatch.setenv("CHAT_TEST_BOTH_SECRET_FILE", str(path))
    assert secret("CHAT_TEST_BOTH_SECRET") == "from-file"


def test_a_secret_may_start_with_a_dollar_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    # django-environ's env.str would read the variable named "ab$cd" instead.
    monkeypatch.setenv("CHAT_TEST_DOLLAR_SECRET", "$ab$cd")
    assert secret("CHAT_TEST_DOLLAR_SECRET") == "$ab$cd"


def test_an_unset_secret_is_none() -> None:
    assert secret("CHAT_TEST_UNSET_SECRET") is None
