"""The API takes JSON bodies only: anything else is refused with 415 before parsing.

django-ninja parses a body as JSON whatever its declared type, so a form post
failed with a misleading 400 "Cannot parse request body" and ``text/plain`` holding
JSON was accepted. A client that sends another media type learns it plainly.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Concatenate

from django.http import HttpRequest, HttpResponseBase, JsonResponse

UNSUPPORTED_MEDIA_TYPE = "Unsupported media type: send application/json"


def is_json(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type (``application/merge-patch+json``)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def require_json_body[**P](
    view: Callable[Concatenate[HttpRequest, P], HttpResponseBase],
) -> Callable[Concatenate[HttpRequest, P], HttpResponseBase]:
    """A view decorator (``ninja.decorators.decorate_view``): 415 with
    ``{"detail": UNSUPPORTED_MEDIA_TYPE}`` unless the request declares a JSON body.
    Nothing is parsed and nothing written for a refused request."""

    @wraps(view)
    def checked(request: HttpRequest, /, *args: P.args, **kwargs: P.kwargs) -> HttpResponseBase:
        if not is_json(request.content_type or ""):
            return JsonResponse({"detail": UNSUPPORTED_MEDIA_TYPE}, status=415)
        return view(request, *args, **kwargs)

    return checked


__all__ = ["UNSUPPORTED_MEDIA_TYPE", "is_json", "require_json_body"]
