"""No HTTP pages: the floor only serves its websocket."""

from __future__ import annotations

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
