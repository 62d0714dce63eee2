"""Development settings (`make run`): the real ones plus django-debug-toolbar.

Production runs project.settings, which never imports debug_toolbar (tests/test_profiling.py
checks it); the toolbar is a `[dev]` dependency and its URLs are added only when it is
installed (project/urls.py). It shows on pages (not the JSON API) with DEBUG on, to
INTERNAL_IPS. docs/data.md, "Profiling".
"""

from __future__ import annotations

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS, MIDDLEWARE

INSTALLED_APPS = [*INSTALLED_APPS, "debug_toolbar"]
# Early, as its docs ask (after nothing that encodes the response).
MIDDLEWARE = [*MIDDLEWARE]
MIDDLEWARE.insert(
    MIDDLEWARE.index("csp.middleware.CSPMiddleware") + 1,
    "debug_toolbar.middleware.DebugToolbarMiddleware",
)
INTERNAL_IPS = ["127.0.0.1", "::1"]

# The production Content-Security-Policy is kept: the toolbar (8.0) loads its scripts and
# styles from /static ('self') and sets styles through the DOM, never inline, so nothing of it
# is blocked. (Its CSP nonce support does not apply: django-csp 4 makes a nonce only when a
# template asks for it, and the toolbar's `{% if toolbar.csp_nonce %}` does not.)
