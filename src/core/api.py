"""The HTTP API (django-ninja): OpenAPI docs at /api/docs."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import ValidationError

from users.api import router as users_router

api = NinjaAPI(title="Die Hard", version="1.0", urls_namespace="api")
api.add_router("/users", users_router)


def _is_malformed_body(errors: list[dict[str, Any]]) -> bool:
    return any(error.get("type") in {"json_invalid", "invalid_json"} for error in errors)


@api.exception_handler(ValidationError)
def validation_failed(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = [
        {key: value for key, value in error.items() if key in {"loc", "msg", "type"}}
        for error in exc.errors
    ]
    if _is_malformed_body(exc.errors):
        return api.create_response(request, {"detail": "Malformed JSON body"}, status=400)
    return api.create_response(request, {"detail": errors}, status=422)
