"""The HTTP API (django-ninja): OpenAPI docs at /api/docs."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import ValidationError

from users.api import router as users_router

# The docs page and the OpenAPI document are served only where enabled (API_DOCS_ENABLED,
# on with DEBUG): in production they map the attack surface for nobody who needs it.
api = NinjaAPI(
    title="Die Hard",
    version="1.0",
    urls_namespace="api",
    docs_url="/docs" if settings.API_DOCS_ENABLED else None,
    openapi_url="/openapi.json" if settings.API_DOCS_ENABLED else None,
)
api.add_router("/users", users_router)


@api.exception_handler(RequestDataTooBig)
def request_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return api.create_response(request, {"detail": "Request body too large"}, status=413)


# Malformed JSON never gets here: django-ninja answers it with 400 itself.
@api.exception_handler(ValidationError)
def validation_failed(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = [
        {key: value for key, value in error.items() if key in {"loc", "msg", "type"}}
        for error in exc.errors
    ]
    return api.create_response(request, {"detail": errors}, status=422)
