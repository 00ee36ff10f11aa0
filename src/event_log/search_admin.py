"""The admin's "Event log" page: a read-only search of ClickHouse for staff who hold
``event_log.view_event_log`` (the permission of :class:`event_log.models.EventLogEntry`).

Filters by event type, time range, subject, actor and request id; pages of
:data:`PAGE_SIZE` events, newest first, each with its JSON context pretty-printed;
a CSV export of the first :data:`EXPORT_MAX_ROWS` matches. Every page and export is a
search (:func:`event_log.search.search_events`), so each is logged as
``event_log_searched`` with the staff user's id.
"""

from __future__ import annotations

import csv
import json
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from event_log.catalogue import event_classes
from event_log.clickhouse import ClickHouseError
from event_log.search import (
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    FoundEvent,
    SearchFilters,
    SearchInputError,
    parse_filters,
    search_events,
)

PAGE_SIZE = 50
EXPORT_MAX_ROWS = MAX_PAGE_SIZE
CSV_COLUMNS = (
    "event_id",
    "event_date_time",
    "event_type",
    "environment",
    "metadata_version",
    "actor",
    "subject",
    "request_id",
    "traceparent",
    "event_context",
)
# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class SearchForm(forms.Form):
    type = forms.CharField(
        required=False,
        label="Event type",
        max_length=255,
        widget=forms.TextInput(attrs={"list": "event-types"}),
    )
    since = forms.CharField(
        required=False, max_length=64, help_text="2h, 7d, 2026-11-30 or 2026-11-30T08:00Z"
    )
    until = forms.CharField(
        required=False, max_length=64, help_text="before this time (same forms as since)"
    )
    subject = forms.CharField(required=False, max_length=320, help_text="kind:id, e.g. user:42")
    actor = forms.CharField(required=False, max_length=320, help_text="user:7, or a kind: system")
    request_id = forms.CharField(required=False, max_length=128, label="Request id")
    page = forms.IntegerField(required=False, min_value=1, max_value=MAX_OFFSET // PAGE_SIZE)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        given: dict[str, Any] = {
            "event_types": [data["type"]] if data.get("type") else [],
            **{
                name: data.get(name) or None
                for name in ("subject", "actor", "request_id", "since", "until")
            },
        }
        # Each filter alone first, so that every field with a mistake shows its own.
        for name, value in given.items():
            if value:
                try:
                    parse_filters(**{name: value})
                except SearchInputError as exc:
                    self.add_error(exc.field if exc.field in self.fields else None, exc.reason)
        if not self.errors:
            try:
                data["filters"] = parse_filters(**given)
            except SearchInputError as exc:
                self.add_error(exc.field if exc.field in self.fields else None, exc.reason)
        return data


def search_page(request: HttpRequest, context: dict[str, Any]) -> HttpResponse:
    """The page (``context`` is the admin's), or the CSV export with ``?format=csv``."""
    form = SearchForm(request.GET)
    searcher = f"user:{request.user.pk}"
    page_number = 1
    found = None
    error = None
    if form.is_valid():
        filters: SearchFilters = form.cleaned_data["filters"]
        page_number = form.cleaned_data.get("page") or 1
        try:
            if request.GET.get("format") == "csv":
                return _csv(filters, searcher=searcher)
            found = search_events(
                filters,
                searcher=searcher,
                limit=PAGE_SIZE,
                offset=(page_number - 1) * PAGE_SIZE,
                output="admin",
            )
        except ClickHouseError as exc:
            error = f"ClickHouse did not answer the search: {exc.summary}"
    status = 400 if form.errors else 200
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("format", None)
    return TemplateResponse(
        request,
        "admin/event_log/search.html",
        {
            **context,
            "title": "Event log",
            "form": form,
            "found": found,
            "events": [_shown(event) for event in found.events] if found else [],
            "error": error,
            "page_number": page_number,
            "query": query.urlencode(),
            "page_size": PAGE_SIZE,
            "export_max_rows": EXPORT_MAX_ROWS,
            "event_types": [cls.event_type for cls in event_classes()],
        },
        status=status,
    )


def _shown(event: FoundEvent) -> dict[str, Any]:
    context = event.event_context
    pretty = (
        context
        if isinstance(context, str)
        else json.dumps(context, indent=2, ensure_ascii=False, sort_keys=True)
    )
    return {**event.as_dict(), "pretty_context": pretty}


def _csv(filters: SearchFilters, *, searcher: str) -> HttpResponse:
    found = search_events(filters, searcher=searcher, limit=EXPORT_MAX_ROWS, output="csv")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="event-log-{stamp}.csv"'
    # More matches than the export holds: say so, rather than let a file look complete.
    response["X-Event-Log-More"] = "true" if found.more else "false"
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for event in found.events:
        row = event.as_dict()
        row["event_context"] = (
            row["event_context"]
            if isinstance(row["event_context"], str)
            else json.dumps(row["event_context"], ensure_ascii=False, separators=(",", ":"))
        )
        writer.writerow([_cell(row[name]) for name in CSV_COLUMNS])
    return response


def _cell(value: Any) -> str:
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text
