"""Operator endpoints that need the wiring of more than one app."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from core.client_address import client_address
from core.rate_limit import FALLBACKS
from event_log.metrics import render_metrics


def metrics_allowed(request: HttpRequest) -> bool:
    """With DEBUG on, anyone; otherwise a bearer token equal to ``METRICS_TOKEN`` (when
    set) or a client address (``core.client_address``) in ``METRICS_ALLOWED_NETWORKS``."""
    if settings.DEBUG:
        return True
    token = str(settings.METRICS_TOKEN)
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip(), token):
        return True
    try:
        address = ipaddress.ip_address(client_address(request))
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(network, strict=False)
        for network in settings.METRICS_ALLOWED_NETWORKS
    )


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition: the event log's metrics and the API's own. 403 for a
    scraper that ``metrics_allowed`` refuses (the figures describe the business)."""
    if not metrics_allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    try:
        body, content_type = render_metrics(extra=(FALLBACKS,))
    except DatabaseError:
        return HttpResponse("database unreachable\n", status=503, content_type="text/plain")
    return HttpResponse(body, content_type=content_type)
