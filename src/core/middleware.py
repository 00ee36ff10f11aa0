"""Echo the request id back to the client, so a caller can quote it in a report."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from django.http import HttpRequest, HttpResponse


class RequestIdHeaderMiddleware:
    """Sets ``X-Request-ID`` on the response to the id django-structlog bound for this request.

    Place it after ``django_structlog.middlewares.RequestMiddleware``, which binds the
    id (honouring an incoming ``X-Request-ID``).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        response = self.get_response(request)
        if request_id:
            response["X-Request-ID"] = str(request_id)
        return response
