"""Sentry: on only when ``SENTRY_DSN`` is set, and never sent personal data.

``send_default_pii`` stays off, its default (no user, cookies or client address), no request
body is read into an event, frames carry no local variables (a relay frame holds
the batch's rows, a view's frame the request's fields), and every event,
transaction and breadcrumb goes through :func:`scrub_event` before it leaves the
process: the redaction that logs get (:mod:`core.redaction`).
"""

from __future__ import annotations

from typing import Any

from core.redaction import redact


def scrub_event(event: Any, _hint: Any = None) -> Any:
    """``before_send`` / ``before_send_transaction``: ``event`` redacted, with any
    request body, cookies and frame variables that an integration added removed."""
    request = event.get("request") if isinstance(event, dict) else None
    if isinstance(request, dict):
        request.pop("data", None)
        request.pop("cookies", None)
    for exception in (event.get("exception") or {}).get("values") or []:
        for frame in (exception.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    return redact(event)


def scrub_breadcrumb(crumb: Any, _hint: Any = None) -> Any:
    """``before_breadcrumb``: a log line or query kept for the next event, redacted."""
    return redact(crumb)


def configure_sentry(
    *,
    dsn: str,
    environment: str,
    traces_sample_rate: float,
    exclude_beat_tasks: list[str] | None = None,
    **options: Any,
) -> bool:
    if not dsn:
        return False
    # Imported here: the Django integration costs most of a second at start-up,
    # which every relay process and management command would pay for nothing.
    import sentry_sdk  # noqa: PLC0415
    from sentry_sdk.integrations.celery import CeleryIntegration  # noqa: PLC0415
    from sentry_sdk.integrations.django import DjangoIntegration  # noqa: PLC0415

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        traces_sample_rate=traces_sample_rate,
        # send_default_pii is left unset, which is off: from sentry-sdk 2.75 naming it
        # (even as False) is deprecated in favour of data_collection.
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
        integrations=[
            DjangoIntegration(),
            CeleryIntegration(monitor_beat_tasks=True, exclude_beat_tasks=exclude_beat_tasks),
        ],
        **options,
    )
    return True
