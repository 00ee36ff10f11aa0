from __future__ import annotations

import json
from typing import Any

import structlog
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Now
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path

from event_log.control import CONTROL_ID, batches_retry_now, relays_pause, relays_resume
from event_log.dead_letter_audit import context_change
from event_log.dead_letters import dead_letters_replay, with_timestamps_as_text
from event_log.models import DeadLetter, EventLogEntry, OutboxBatch, OutboxEvent, RelayControl
from event_log.search_admin import search_page
from event_log.sql import ENVELOPE_COLUMNS

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
        *ENVELOPE_COLUMNS,
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
        *ENVELOPE_COLUMNS,
        "batch",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxEvent]:
        return with_timestamps_as_text(super().get_queryset(request), ("event_date_time",))

    @admin.display(description="event date time", ordering="event_date_time")
    def event_time(self, event: OutboxEvent) -> str:
        return str(getattr(event, "event_date_time_text", ""))


@admin.register(OutboxBatch)
class OutboxBatchAdmin(ReadOnlyAdmin):
    """Sealed batches not yet delivered: what keeps failing, and a way to retry it now."""

    list_display = (
        "id",
        "attempts",
        "error",
        "lease_until",
        "leased",
        "first_id",
        "last_id",
        "rows",
        "sealed_at",
    )
    ordering = ("sealed_at", "id")
    readonly_fields = (
        "id",
        "attempts",
        "last_error",
        "lease_until",
        "first_id",
        "last_id",
        "rows",
        "sealed_at",
    )
    actions = ("retry_now",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxBatch]:
        # The batch's rows lie in [first_id, last_id]: counted on the primary key.
        rows = (
            OutboxEvent.objects.filter(
                id__gte=OuterRef("first_id"), id__lte=OuterRef("last_id"), batch_id=OuterRef("pk")
            )
            .order_by()
            .values("batch_id")
            .annotate(n=Count("*"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(row_count=Coalesce(Subquery(rows), 0), is_leased=Q(lease_until__gt=Now()))
        )

    @admin.display(description="rows")
    def rows(self, batch: OutboxBatch) -> int:
        return int(getattr(batch, "row_count", 0))

    @admin.display(description="leased", boolean=True)
    def leased(self, batch: OutboxBatch) -> bool:
        return bool(getattr(batch, "is_leased", False))

    @admin.display(description="last error")
    def error(self, batch: OutboxBatch) -> str:
        return batch.last_error[:200]

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Nothing is edited by hand; the change permission only gates "retry now".
        return obj is None and request.user.has_perm("event_log.change_outboxbatch")

    @admin.action(description="Retry now (the next relay run takes them)", permissions=["change"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[OutboxBatch]) -> None:
        count = batches_retry_now(ids=list(queryset.values_list("id", flat=True)))
        self.message_user(
            request, f"{count} batches due now: the next relay run takes them", messages.SUCCESS
        )


class RelayControlForm(ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = RelayControl
        fields = ("paused", "reason")


@admin.register(RelayControl)
class RelayControlAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Pause and resume every relay: a flag each relay reads before it claims a batch."""

    form = RelayControlForm
    list_display = ("__str__", "paused", "paused_by", "paused_at", "reason")
    readonly_fields = ("paused_by", "paused_at")
    actions = ("pause", "resume")

    def get_queryset(self, request: HttpRequest) -> QuerySet[RelayControl]:
        # The one row, there to act on even before anyone ever paused.
        RelayControl.objects.get_or_create(id=CONTROL_ID)
        return super().get_queryset(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def save_model(
        self,
        request: HttpRequest,
        obj: RelayControl,
        form: ModelForm,  # type: ignore[type-arg]
        change: bool,
    ) -> None:
        if obj.paused:
            relays_pause(by=_who(request), reason=obj.reason)
        else:
            relays_resume(by=_who(request))

    @admin.action(description="Pause all relays", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[RelayControl]) -> None:
        relays_pause(by=_who(request), reason="paused from the admin")
        self.message_user(request, "relays paused: nothing is delivered until resumed")

    @admin.action(description="Resume all relays", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[RelayControl]) -> None:
        relays_resume(by=_who(request))
        self.message_user(request, "relays resumed", messages.SUCCESS)


def _who(request: HttpRequest) -> str:
    return f"{request.user.get_username()} (admin)"


@admin.register(EventLogEntry)
class EventLogAdmin(ReadOnlyAdmin):
    """The "Event log" page: a read-only search of ClickHouse (event_log.search_admin),
    for staff who hold ``event_log.view_event_log``; nothing to add, change or delete."""

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("event_log.view_event_log")

    def get_urls(self) -> list[URLPattern]:
        opts = self.model._meta
        return [
            path(
                "",
                self.admin_site.admin_view(self.search_view),
                name=f"{opts.app_label}_{opts.model_name}_changelist",
            )
        ]

    def search_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {**self.admin_site.each_context(request), "opts": self.model._meta}
        return search_page(request, context)
