"""Operator endpoints that need the wiring of more than one app."""

from __future__ import annotations

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from core.rate_limit import FALLBACKS
from event_log.metrics import render_metrics


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition: the event log's metrics and the API's own."""
    try:
        body, content_type = render_metrics(extra=(FALLBACKS,))
    except DatabaseError:
        return HttpResponse("database unreachable\n", status=503, content_type="text/plain")
    return HttpResponse(body, content_type=content_type)
