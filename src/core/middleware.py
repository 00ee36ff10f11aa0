"""Request ids: accept only a well-formed incoming one, and echo the id back to the caller."""

from __future__ import annotations

import re
from collections.abc import Callable

import structlog
from django.http import HttpRequest, HttpResponse

# What a proxy or a client may hand us as a request id; anything else is replaced by
# a fresh one, so a caller cannot write arbitrary text into every log line.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Handler = Callable[[HttpRequest], HttpResponse]


class RequestIdSanitizerMiddleware:
    """Drops a malformed incoming ``X-Request-ID``.

    Place it before ``django_structlog.middlewares.RequestMiddleware``, which binds
    the incoming id (or a new UUID) as ``request_id``.
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.META.get("HTTP_X_REQUEST_ID")
        if incoming is not None and not _REQUEST_ID.match(incoming):
            del request.META["HTTP_X_REQUEST_ID"]
            request.__dict__.pop("headers", None)  # a cached property built from META
        return self.get_response(request)


class RequestIdHeaderMiddleware:
    """Sets ``X-Request-ID`` on the response to the id bound for this request.

    Place it after ``django_structlog.middlewares.RequestMiddleware``.
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        response = self.get_response(request)
        if request_id:
            response["X-Request-ID"] = str(request_id)
        return response
