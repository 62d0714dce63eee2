"""The production settings: `check --deploy` is clean, the secrets come from the environment or
`*_FILE` paths, and passwords are hashed with Argon2.

Each check runs `manage.py` in a subprocess under project.settings (not the test settings), with an
environment built here, so nothing from the developer's shell leaks in.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings

import project.settings as production

ROOT = Path(__file__).resolve().parent.parent
SETTING_SECRETS = ["SECRET_KEY", "REDIS_URL", "DATABASE_URL", "DATABASE_PASSWORD"]


def manage(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECURE"))}
    for name in [*SETTING_SECRETS, "REQUIRE_SECRET_KEY", "DEBUG", "ALLOWED_HOSTS"]:
        base.pop(name, None)
        base.pop(f"{name}_FILE", None)
    base.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        # Keep a fallback SQLite file out of the checkout's var/.
        SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_check_deploy_is_clean_under_the_production_settings(tmp_path: Path) -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        tmp_path=tmp_path,
        SECURE="1",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_check_deploy_flags_the_development_defaults(tmp_path: Path) -> None:
    """The check is live: without SECURE=1 it finds the missing HTTPS settings."""
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        tmp_path=tmp_path,
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
    )
    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr


@pytest.mark.parametrize("switch", [{"REQUIRE_SECRET_KEY": "1"}, {"SECURE": "1"}])
def test_a_missing_secret_key_stops_production_from_starting(
    tmp_path: Path, switch: dict[str, str]
) -> None:
    result = manage("check", "--deploy", tmp_path=tmp_path, DEBUG="0", **switch)
    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set" in result.stderr


def test_secrets_are_read_from_files(tmp_path: Path) -> None:
    secret_key = secrets.token_urlsafe(50)
    redis_url = f"redis://:{secrets.token_hex(8)}@127.0.0.1:6390/0"
    db_password = secrets.token_hex(16)
    files = {}
    for name, value in [
        ("SECRET_KEY", secret_key),
        ("REDIS_URL", redis_url),
        ("DATABASE_PASSWORD", db_password),
    ]:
        path = tmp_path / name.lower()
        path.write_text(value + "\n")  # as `echo` or a Kubernetes secret might leave it
        files[f"{name}_FILE"] = str(path)
    # Print digests and shapes, never the secrets themselves.
    script = (
        "import hashlib, json; from django.conf import settings as s; "
        "h = lambda v: hashlib.sha256(v.encode()).hexdigest(); "
        "db = s.DATABASES['default']; "
        "print(json.dumps({'secret_key': h(s.SECRET_KEY), "
        "'redis': h(s.REDIS_URL), 'engine': db['ENGINE'], "
        "'db_password': h(db['PASSWORD'])}))"
    )
    result = manage(
        "shell",
        "--verbosity=0",  # no "N objects imported automatically" banner
        "-c",
        script,
        tmp_path=tmp_path,
        SECURE="1",
        DEBUG="0",
        DATABASE_URL="postgres://chat@127.0.0.1:5432/chat",
        **files,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "secret_key": digest(secret_key),
        "redis": digest(redis_url),
        "engine": "django.db.backends.postgresql",
        "db_password": digest(db_password),
    }
    for value in (secret_key, db_password, redis_url):
        assert value not in result.stdout + result.stderr


def test_the_production_settings_hash_passwords_with_argon2(tmp_path: Path) -> None:
    script = (
        "from django.contrib.auth.hashers import get_hasher; print(get_hasher('default').algorithm)"
    )
    result = manage(
        "shell",
        "--verbosity=0",
        "-c",
        script,
        tmp_path=tmp_path,
        SECRET_KEY=secrets.token_urlsafe(50),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "argon2"


@override_settings(PASSWORD_HASHERS=production.PASSWORD_HASHERS)
def test_a_created_users_password_is_stored_as_an_argon2_hash(db: None) -> None:
    user: Any = get_user_model().objects.create_user("dora", password="dora-password")
    user.refresh_from_db()
    assert user.password.startswith("argon2$argon2id$")
    assert "dora-password" not in user.password
    assert user.check_password("dora-password")
