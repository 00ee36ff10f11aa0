"""Request context for logs: a well-formed incoming request id only, echoed back to the
caller, and the client address under the trusted-proxy rule."""

from __future__ import annotations

import re
from collections.abc import Callable

import structlog
from django.http import HttpRequest, HttpResponse
from django_structlog.middlewares import RequestMiddleware as StructlogRequestMiddleware

from core.client_address import client_address

# What a proxy or a client may hand us as a request id; anything else is replaced by
# a fresh one, so a caller cannot write arbitrary text into every log line.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Handler = Callable[[HttpRequest], HttpResponse]


class RequestIdSanitizerMiddleware:
    """Drops a malformed incoming ``X-Request-ID``.

    Place it before ``RequestMiddleware`` (django-structlog's), which binds
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

    Place it after ``RequestMiddleware``.
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        response = self.get_response(request)
        if request_id:
            response["X-Request-ID"] = str(request_id)
        return response


class RequestMiddleware(StructlogRequestMiddleware):
    """django-structlog's request middleware with the service's client address.

    django-structlog asks django-ipware, which believes ``X-Forwarded-For`` and
    ``X-Real-IP`` from anyone: a client could write any address into every log line
    of its request. The ``ip`` bound here follows ``NUM_PROXIES`` like the rate limit
    and the admin login records (``core.client_address``).
    """

    @classmethod
    def bind_ip(cls, request: HttpRequest) -> None:
        structlog.contextvars.bind_contextvars(ip=client_address(request))
