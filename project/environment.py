"""Where the settings come from: the environment, or files that NAME_FILE variables name."""

from __future__ import annotations

import environ

# Any variable may also come from the file NAME_FILE points at.
env = environ.FileAwareEnv()


def secret(name: str) -> str | None:
    """A secret from NAME, or from the file that NAME_FILE points at."""
    # Read through env.ENVIRON, not env.str: env.str would take a value starting with "$" as
    # the name of another variable to read (Django's generated keys may start with "$"), and
    # would keep the newline a mounted file ends with.
    value = env.ENVIRON.get(name)
    return value.strip() if value is not None else None
