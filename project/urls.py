from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from web import views

handler404 = "web.errors_views.not_found"
handler500 = "web.errors_views.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", views.LogoutView.as_view(), name="logout"),
    path("api/me", views.me),
    path("api/rooms", views.rooms),
    path("api/rooms/<slug:slug>/members", views.members),
    path("api/rooms/<slug:slug>/members/<str:username>", views.members),
    path("api/rooms/<slug:slug>/messages", views.messages),
    path("api/rooms/<slug:slug>/read", views.mark_read),
    path("healthz", views.healthz),
]
