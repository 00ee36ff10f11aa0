"""System checks: misconfiguration is reported by ``manage.py check`` with stable ids."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from event_log.clickhouse import CONNECT_TIMEOUT_MAX
from event_log.conf import event_log_settings
from event_log.publisher import InvalidEnvironmentError, environment_checked


@register()
def check_event_log_settings(**_: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    try:
        environment_checked(getattr(settings, "ENVIRONMENT", ""))
    except InvalidEnvironmentError as exc:
        messages.append(
            Error(
                str(exc),
                hint="Every publish() would fail. Set ENVIRONMENT to a shorter name "
                "(it is written into each event's environment column).",
                id="event_log.E003",
            )
        )
    try:
        config = event_log_settings()
    except ImproperlyConfigured as exc:
        messages.append(Error(str(exc), id="event_log.E002"))
        return messages
    if config.LEASE_SECONDS < config.TIME_BUDGET:
        messages.append(
            Warning(
                "EVENT_LOG_LEASE_SECONDS is shorter than EVENT_LOG_TIME_BUDGET.",
                hint="A relay may then lose its lease mid-run; the batch is re-sent and "
                "deduplicated, but work is wasted. Keep the lease longer than one run.",
                id="event_log.W001",
            )
        )
    guarded = config.INSERT_TIMEOUT + min(config.INSERT_TIMEOUT, CONNECT_TIMEOUT_MAX)
    if guarded >= config.LEASE_SECONDS:
        messages.append(
            Warning(
                f"One INSERT can outlast its lease: connecting (up to "
                f"{min(config.INSERT_TIMEOUT, CONNECT_TIMEOUT_MAX):g} s) plus "
                f"EVENT_LOG_INSERT_TIMEOUT ({config.INSERT_TIMEOUT:g} s) is not shorter than "
                f"EVENT_LOG_LEASE_SECONDS ({config.LEASE_SECONDS:g} s).",
                hint="The relay renews its lease right before each INSERT, and the server "
                "stops an INSERT after EVENT_LOG_INSERT_TIMEOUT; if that can end after the "
                "lease, another relay may look the batch up while the INSERT still runs. "
                "Lower the timeout or lengthen the lease.",
                id="event_log.W002",
            )
        )
    return messages
