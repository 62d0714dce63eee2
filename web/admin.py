"""The admin is for looking, and for revoking tokens; state changes still go through actions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from web import actions
from web.models import ApiToken, Membership, Message, Room


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
