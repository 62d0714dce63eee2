"""ASGI entry point: Django for HTTP, the chat consumer for /ws/."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

# Imported after Django is set up: they load models.
from channels.routing import ProtocolTypeRouter  # noqa: E402

from realtime.auth import WebsocketAuthMiddleware  # noqa: E402
from realtime.process import lifespan  # noqa: E402
from realtime.routing import websocket_app  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": WebsocketAuthMiddleware(websocket_app),
        # Shutdown closes what the process keeps (realtime/process.py).
        "lifespan": lifespan,
    }
)
