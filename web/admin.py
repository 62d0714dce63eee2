"""The admin is for looking, and for revoking tokens; state changes still go through actions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from web import actions
from web.actions.notifications import do_revoke_service_keys
from web.models import (
    ApiToken,
    Membership,
    Message,
    Notification,
    Room,
    ServiceKey,
    Webhook,
    WebhookDelivery,
)


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # generic over any model
    # Rooms, members and messages change only through web/actions.py, which keeps seqs
    # gap-free and broadcasts after commit; editing rows here would bypass both.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Room)
class RoomAdmin(ReadOnlyAdmin):
    list_display = ("slug", "title", "private", "owner", "last_seq", "created_at")
    search_fields = ("slug", "title")
    list_filter = ("private",)


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ("room", "user", "role", "last_read_seq")
    list_select_related = ("room", "user")
    search_fields = ("room__slug", "user__username")


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("room", "seq", "sender", "created_at")
    list_select_related = ("room", "sender")
    search_fields = ("room__slug",)


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("user", "name", "created_at", "revoked_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "name")
    actions = ("revoke",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = actions.do_revoke_tokens(queryset)
        self.message_user(request, f"Revoked {count} tokens.")


@admin.register(Webhook)
class WebhookAdmin(ReadOnlyAdmin):
    # Not the secret: it signs deliveries, and was shown to its owner once, at creation.
    fields = ("user", "url", "kinds", "created_at")
    list_display = ("pk", "user", "url", "kinds", "created_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "url")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    """The last deliveries and how they went (web/tasks.py deliver_webhook records each try)."""

    list_display = (
        "pk",
        "webhook",
        "notification",
        "status",
        "attempts",
        "response_status",
        "error",
        "created_at",
        "finished_at",
    )
    list_filter = ("status",)
    list_select_related = ("webhook", "notification")
    ordering = ("-created_at", "-pk")
    search_fields = ("webhook__url", "webhook__user__username")


@admin.register(ServiceKey)
class ServiceKeyAdmin(ReadOnlyAdmin):
    # Issued with `manage.py issue_service_key NAME` (the raw key is shown once, there).
    fields = ("name", "created_at", "revoked_at")
    list_display = ("name", "created_at", "revoked_at")
    search_fields = ("name",)
    actions = ("revoke",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    @admin.action(description="Revoke the selected service keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ServiceKey]) -> None:
        count = do_revoke_service_keys(queryset)
        self.message_user(request, f"Revoked {count} service keys.")


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ("user", "seq", "kind", "created_at", "read_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "kind")
    list_filter = ("kind",)
