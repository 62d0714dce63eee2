from __future__ import annotations

from django.urls import path

from bench.baselines.floor import consumers

# The tutorial routes ws/chat/<room_name>/; our protocol names rooms in its frames.
websocket_urlpatterns = [
    path("ws/", consumers.ChatConsumer.as_asgi()),
]
