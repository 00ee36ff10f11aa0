"""The DEBUG error page and error e-mails show settings and request metadata; Django
hides values under names like ``PASSWORD`` or ``SECRET``, not a password inside a
URL (``DATABASE_URL``, ``CLICKHOUSE_URL``, ``REDIS_URL``, ``CELERY_BROKER_URL``, a
cache ``LOCATION``), nor e-mail addresses."""

from __future__ import annotations

from typing import Any

from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

from core.redaction import redact, redact_text


class UrlPasswordExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's filter, plus: every string setting (at any depth), request header and
    frame variable has its URL passwords masked and its e-mail addresses replaced."""

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        return redact_text(cleansed) if isinstance(cleansed, str) else cleansed

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        return [
            (name, redact(value, key=name))
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]


class RedactingExceptionReporter(ExceptionReporter):
    """Django's reporter, with the exception's message redacted like a log line: a
    driver's error often quotes the URL it could not reach."""

    def get_traceback_data(self) -> dict[str, Any]:
        data = super().get_traceback_data()
        if isinstance(data.get("exception_value"), str):
            data["exception_value"] = redact_text(data["exception_value"])
        return data
