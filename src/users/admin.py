from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from event_log import publish
from event_log.erasure import event_log_erase
from users.events import user_created_event
from users.models import User


@admin.register(User)
class UserAdmin(BaseUserAdmin):  # type: ignore[type-arg]
    ordering = ("-id",)
    actions = ("erase_from_event_log",)
    list_display = ("email", "first_name", "last_name", "is_staff", "is_active", "created_at")
    search_fields = ("email", "first_name", "last_name")
    readonly_fields = ("created_at", "updated_at", "last_login")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Name", {"fields": ("first_name", "last_name")}),
        (
            "Flags",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "created_at", "updated_at")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "first_name", "last_name", "password1", "password2"),
            },
        ),
    )

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        """A user added here publishes ``UserCreated`` like one created through the API;
        the admin's change view runs in one transaction, so both commit or neither."""
        super().save_model(request, obj, form, change)
        if not change:
            publish(user_created_event(obj))

    @admin.action(
        description="Erase their personal data from the event log", permissions=["delete"]
    )
    def erase_from_event_log(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        """``manage.py event_log_erase --subject user:<id>`` for each selected user; the
        account itself is left to the usual delete."""
        for user in queryset:
            report = event_log_erase(subject=f"user:{user.pk}")
            self.message_user(
                request,
                f"user {user.pk}: {report.outbox_events} outbox, {report.dead_letters} dead "
                f"letters, {report.clickhouse_events} ClickHouse events erased",
                messages.SUCCESS,
            )
