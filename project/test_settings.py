"""Test-only settings on top of the real ones.

The database is a throwaway PostgreSQL server the test run starts itself
(pytest-postgresql); tests/conftest.py fills in its port.
"""

from __future__ import annotations

from project.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "chat",
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "",  # set by tests/conftest.py once the throwaway server is up
        "TEST": {"NAME": "test_chat"},
        # As settings.py gives a DATABASE_URL's connections (the store's prepared statement).
        "OPTIONS": {"options": GENERIC_PLANS_OPTION},  # noqa: F405
    }
}

# In-process tests use the fan-out's in-process backend; tests that need Redis set REDIS_URL.
REDIS_URL = None
# The channel layer in process too (settings.py read REDIS_URL from the environment).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "realtime.layer.ChatChannelLayer",
        "CONFIG": {"url": None, "expiry": 60.0, "capacity": 100},
    }
}

# The test run is one long process: nothing it made at some test's lifespan startup is frozen
# for the rest of the run (tests/test_garbage.py turns it on where it checks it).
GC_FREEZE = False
