from __future__ import annotations

from django.apps import apps
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from django_otp.admin import OTPAdminSite

from project import health
from web import views, views_metrics, views_notifications, views_pages, views_webhooks

# django-otp's documented way to make the default admin site require a verified second factor:
# staff who have not entered a TOTP token are treated as if they were not staff.
admin.site.__class__ = OTPAdminSite

handler400 = "web.errors_views.bad_request"
handler403 = "web.errors_views.permission_denied"
handler404 = "web.errors_views.not_found"
handler500 = "web.errors_views.server_error"

urlpatterns = [
    path("", views_pages.app, name="home"),
    path("accounts/signup/", views_pages.signup, name="signup"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", views.LogoutView.as_view(), name="logout"),
    path("api/me", views.me),
    path("api/rooms", views.rooms),
    path("api/rooms/<slug:slug>/members", views.members),
    path("api/rooms/<slug:slug>/members/<str:username>", views.members),
    path("api/rooms/<slug:slug>/messages", views.messages),
    path("api/rooms/<slug:slug>/read", views.mark_read),
    path("api/rooms/<slug:slug>/presence", views.presence),
    path("api/webhooks", views_webhooks.webhooks),
    path("api/webhooks/<int:webhook_id>", views_webhooks.webhook),
    path("api/notifications", views_notifications.notifications),
    path("api/notifications/read", views_notifications.mark_read),
    path("api/notify", views_notifications.notify),
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    # For Prometheus scraping pods; the Ingress does not route it (docs/operations.md).
    path("metrics", views_metrics.metrics_view),
]

# django-debug-toolbar's URLs, only under project/settings_dev.py (`make run`): production
# settings do not install it, and this module then never imports it.
if apps.is_installed("debug_toolbar"):
    from debug_toolbar.toolbar import debug_toolbar_urls

    urlpatterns += debug_toolbar_urls()
