"""structlog, configured once for every process (web, Celery worker and Beat, commands).

Standard-library records (Django, Celery, clickhouse-connect) go through the
same processors and renderer as structlog's own, so one process writes one
format: JSON lines in production, a readable console in development.
"""

from __future__ import annotations

import logging.config
from typing import Any

import structlog

from core.dsn import mask_secrets
from core.redaction import REDACTED, REDACTED_KEYS, redact

__all__ = ["REDACTED", "REDACTED_KEYS", "configure_logging", "redact_personal_data"]


def redact_personal_data(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Redact the whole record (see :mod:`core.redaction`): nested values, positional
    arguments, exception text and tracebacks, e-mail addresses in free text; and mask
    passwords in URLs, whatever characters they hold (:func:`core.dsn.mask_secrets`).

    It runs last before rendering, after the message is formatted with its arguments
    and the exception is turned into text, so what it sees is what is written.
    """
    return {key: _masked(redact(value, key=key)) for key, value in event_dict.items()}


def _masked(value: Any) -> Any:
    if isinstance(value, str) and ("@" in value or "=" in value):
        return mask_secrets(value)
    return value


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


# Loggers that write a line for every task and every Beat tick ("Sending due task",
# "Task … received", "Task … succeeded", "Discarding revoked task" for a tick that
# expired while a long run held the worker): with the relay scheduled every few seconds
# they were most of an idle stack's log. They log their failures at WARNING and
# above, which stay; LOG_LEVEL=DEBUG shows the routine lines again.
PER_TICK_LOGGERS = (
    "celery.beat",
    "celery.worker.strategy",
    "celery.worker.request",
    "celery.app.trace",
)


def per_tick_level(log_level: str) -> str:
    """The level of :data:`PER_TICK_LOGGERS`: WARNING, unless LOG_LEVEL asks for
    more (DEBUG) or less (ERROR, CRITICAL)."""
    if log_level == "DEBUG" or logging.getLevelName(log_level) > logging.WARNING:
        return log_level
    return "WARNING"


def configure_logging(*, log_format: str, log_level: str) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer()
    )
    shared = _shared_processors()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "structured": {
                    "()": structlog.stdlib.ProcessorFormatter,
                    "processors": [
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info,
                        redact_personal_data,
                        renderer,
                    ],
                    "foreign_pre_chain": shared,
                }
            },
            "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "structured"}},
            "root": {"handlers": ["default"], "level": log_level},
            "loggers": {
                "django.db.backends": {"level": "WARNING"},
                "celery": {"level": log_level},
                **{name: {"level": per_tick_level(log_level)} for name in PER_TICK_LOGGERS},
            },
        }
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
