"""Sentry: on only when ``SENTRY_DSN`` is set."""

from __future__ import annotations

from typing import Any


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
        send_default_pii=False,
        integrations=[
            DjangoIntegration(),
            CeleryIntegration(monitor_beat_tasks=True, exclude_beat_tasks=exclude_beat_tasks),
        ],
        **options,
    )
    return True
