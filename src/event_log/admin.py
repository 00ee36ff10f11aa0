from __future__ import annotations

import json
from typing import Any

import structlog
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from event_log.dead_letter_audit import context_change
from event_log.dead_letters import dead_letters_replay, with_timestamps_as_text
from event_log.models import DeadLetter, OutboxBatch, OutboxEvent

logger = structlog.get_logger(__name__)


class DeadLetterForm(ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = DeadLetter
        fields = ("event_context",)

    def clean_event_context(self) -> str:
        text: str = self.cleaned_data["event_context"]
        try:
            json.loads(text)
        except ValueError as exc:
            raise ValidationError(f"event_context must be valid JSON: {exc}") from exc
        return text


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Staff inspect rejected events, fix their context if needed, and replay them."""

    form = DeadLetterForm
    list_display = ("id", "event_type", "event_id", "error_code", "attempts", "dead_lettered")
    list_filter = ("event_type", "error_code")
    search_fields = ("event_id", "error")
    # Timestamps are shown as text: a dead letter dated 'infinity' or after year 9999
    # cannot be loaded as a datetime, and it must still be listed and opened.
    readonly_fields = (
        "event_id",
        "event_type",
        "event_time",
        "environment",
        "metadata_version",
        "error",
        "error_code",
        "attempts",
        "batch_id",
        "dead_lettered",
    )
    actions = ("replay",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadLetter]:
        return with_timestamps_as_text(super().get_queryset(request))

    @admin.display(description="event date time", ordering="event_date_time")
    def event_time(self, letter: DeadLetter) -> str:
        return str(getattr(letter, "event_date_time_text", ""))

    @admin.display(description="dead lettered at", ordering="dead_lettered_at")
    def dead_lettered(self, letter: DeadLetter) -> str:
        return str(getattr(letter, "dead_lettered_at_text", ""))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: DeadLetter, form: Any, change: bool) -> None:
        """Record the edit without the values: the admin's log entry (see
        :meth:`construct_change_message`) and a log line get field names and digests."""
        before = form.initial.get("event_context", "")
        super().save_model(request, obj, form, change)
        edit = context_change(before, obj.event_context)
        form.context_change = edit
        logger.info(
            "dead_letter_edited",
            dead_letter_id=obj.pk,
            event_id=str(obj.event_id),
            user_id=request.user.pk,
            **{f"context_{key}": value for key, value in edit.as_dict().items()},
        )

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> list[dict[str, Any]]:
        message: list[dict[str, Any]] = super().construct_change_message(
            request, form, formsets, add
        )
        edit = getattr(form, "context_change", None)
        if edit is not None:
            # Django shows "changed" entries; the digests stay in the stored JSON.
            message = [
                {"changed": {"fields": [f"event_context.{name}" for name in edit.fields]}},
                {"event_context": edit.as_dict()},
            ]
        return message

    @admin.action(description="Replay selected dead letters", permissions=["change"])
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        letters = list(queryset)
        count = dead_letters_replay(ids=[letter.pk for letter in letters])
        for letter in letters:
            # The dead letter is gone (back in the outbox): the entry keeps its id and event.
            self.log_change(
                request,
                letter,
                [
                    {"replayed": {"event_id": str(letter.event_id)}},
                    {"event_context": {"digest": context_change("", letter.event_context).after}},
                ],
            )
        self.message_user(
            request, f"{count} dead letters sent back to the outbox", messages.SUCCESS
        )


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "event_type", "event_id", "event_time", "batch")
    list_filter = ("event_type",)
    show_full_result_count = False
    # event_date_time as text, as for dead letters: a replayed dead letter may be dated
    # where a datetime cannot follow.
    fields = (
        "event_id",
        "event_type",
        "event_time",
        "environment",
        "event_context",
        "metadata_version",
        "batch",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxEvent]:
        return with_timestamps_as_text(super().get_queryset(request), ("event_date_time",))

    @admin.display(description="event date time", ordering="event_date_time")
    def event_time(self, event: OutboxEvent) -> str:
        return str(getattr(event, "event_date_time_text", ""))


@admin.register(OutboxBatch)
class OutboxBatchAdmin(ReadOnlyAdmin):
    list_display = ("id", "sealed_at", "lease_until", "attempts", "last_error")
