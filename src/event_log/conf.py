"""The event log's settings: one typed object, read lazily from ``settings.EVENT_LOG``.

Each key is set from the environment variable ``EVENT_LOG_<KEY>`` (``KICK_ENABLED``
from ``EVENT_LOG_KICK``):

- ``BATCH_SIZE``: most rows in one sealed batch, so in one ClickHouse INSERT;
- ``BATCH_MAX_BYTES``: most bytes of event context in one batch (an event over it
  travels alone and is dead-lettered unsent);
- ``RELAY_INTERVAL``: seconds between Beat-driven relay runs;
- ``LEASE_SECONDS``: how long a relay owns a sealed batch;
- ``TIME_BUDGET``: seconds one relay run drains before it returns;
- ``BACKOFF_INITIAL`` / ``BACKOFF_MAX``: retry delay after a transient error, and its cap;
- ``KICK_ENABLED``: queue a relay run when a transaction that published commits;
- ``INSERT_TIMEOUT``: seconds a ClickHouse server may take to answer the relay;
- ``MIN_INSERT_INTERVAL``: least seconds between two partial batches of one relay;
- ``ISOLATION_MAX_INSERTS``: most INSERTs one attempt may spend isolating refused rows;
- ``ALERT_AFTER_ATTEMPTS``: attempts after which a batch that still fails is logged
  at error level and reported as stuck;
- ``CLICKHOUSE_TABLE``: the ClickHouse table events go to;
- ``DELIVERY_RETENTION``: seconds the delivered event ids of each batch are kept
  in PostgreSQL for ``event_log_verify``;
- ``RETENTION_DAYS``: days an event stays in ClickHouse (a TTL set by
  ``clickhouse_migrate``), 0 for ever;
- ``DEAD_LETTER_RETENTION_DAYS``: days a dead letter stays before the daily purge
  deletes it, 0 for ever.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True, slots=True)
class EventLogSettings:
    BATCH_SIZE: int = 5_000
    BATCH_MAX_BYTES: int = 16 * 1024 * 1024
    RELAY_INTERVAL: float = 2.0
    LEASE_SECONDS: float = 30.0
    TIME_BUDGET: float = 10.0
    BACKOFF_INITIAL: float = 0.5
    BACKOFF_MAX: float = 30.0
    KICK_ENABLED: bool = True
    INSERT_TIMEOUT: float = 15.0
    MIN_INSERT_INTERVAL: float = 0.2
    ISOLATION_MAX_INSERTS: int = 500
    ALERT_AFTER_ATTEMPTS: int = 10
    CLICKHOUSE_TABLE: str = "event_log"
    DELIVERY_RETENTION: float = 7 * 24 * 3600.0
    RETENTION_DAYS: int = 0
    DEAD_LETTER_RETENTION_DAYS: int = 30

    def __post_init__(self) -> None:
        if self.BATCH_SIZE < 1:
            raise ImproperlyConfigured("EVENT_LOG['BATCH_SIZE'] must be at least 1")
        if self.BATCH_MAX_BYTES < 1024:
            raise ImproperlyConfigured("EVENT_LOG['BATCH_MAX_BYTES'] must be at least 1024")
        if self.ISOLATION_MAX_INSERTS < 2 or self.ALERT_AFTER_ATTEMPTS < 1:
            raise ImproperlyConfigured(
                "EVENT_LOG['ISOLATION_MAX_INSERTS'] must be at least 2 and "
                "EVENT_LOG['ALERT_AFTER_ATTEMPTS'] at least 1"
            )
        if self.LEASE_SECONDS <= 0 or self.TIME_BUDGET <= 0:
            raise ImproperlyConfigured("EVENT_LOG lease and time budget must be positive")
        if self.DELIVERY_RETENTION < 0:
            raise ImproperlyConfigured("EVENT_LOG['DELIVERY_RETENTION'] must not be negative")
        if self.RETENTION_DAYS < 0 or self.DEAD_LETTER_RETENTION_DAYS < 0:
            raise ImproperlyConfigured("EVENT_LOG retention days must be 0 (for ever) or more")
        if not self.CLICKHOUSE_TABLE.replace("_", "").isalnum():
            raise ImproperlyConfigured("EVENT_LOG['CLICKHOUSE_TABLE'] must be a plain identifier")


def event_log_settings(**overrides: Any) -> EventLogSettings:
    """The current settings (re-read each call so tests can override them)."""
    configured: dict[str, Any] = dict(getattr(settings, "EVENT_LOG", {}))
    known = {f.name for f in fields(EventLogSettings)}
    unknown = set(configured) - known
    if unknown:
        raise ImproperlyConfigured(f"EVENT_LOG has unknown keys: {', '.join(sorted(unknown))}")
    configured.update(overrides)
    return EventLogSettings(**configured)
