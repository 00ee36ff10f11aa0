"""HTTP endpoint for operators: /health (thin: the work is in status). /metrics is
core.views.metrics, which adds the API's own metrics to the event log's."""

from __future__ import annotations

from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from event_log.status import outbox_status


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """200 when PostgreSQL answers (with outbox depth and lag), 503 otherwise.

    Reads in constant time however long the backlog (``event_log.status``), so a
    long ClickHouse outage does not fail the health check.
    """
    try:
        status = outbox_status()
    except DatabaseError:
        return JsonResponse({"status": "unavailable", "database": "unreachable"}, status=503)
    return JsonResponse(
        {
            "status": "ok",
            "database": "ok",
            "outbox_depth": status.outbox_depth,
            "outbox_depth_exact": status.outbox_depth_exact,
            "lag_seconds": round(status.lag_seconds, 3),
            "dead_letters": status.dead_letters,
            "relays_paused": status.relays_paused,
        }
    )
