"""Read-only views of the event log's health, for the status command, /health and /metrics.

Every figure is read in constant time, however long the backlog (see ``sql.STATUS``):
a health check must not slow down, and time out, just when ClickHouse has been away
for hours.

- ``outbox_depth``: events not yet in ClickHouse. Exact up to :data:`EXACT_COUNT_LIMIT`
  (``outbox_depth_exact`` is then true); beyond, an upper bound: the span of the
  waiting ids (last id - first id + 1), which also counts ids that no waiting row holds
  (rolled-back publishes, delivered or dead-lettered rows in between).
- ``oldest_event_at``: publish time of the waiting event with the lowest id. Ids come
  from a sequence at insert, so this is the oldest event but for two cases: two
  publishes racing by less than the time between reading the clock and inserting,
  and a replayed dead letter (new id, original time). ``lag_seconds`` is its age.
- ``dead_letters``: exact up to :data:`EXACT_COUNT_LIMIT` (``dead_letters_exact``),
  beyond an upper bound from the id span, as for the outbox.
- ``batches_in_flight``: an exact count; the batch table only holds sealed batches
  not yet delivered, a few per relay.
- ``batches_stuck``: those of them tried ``EVENT_LOG_ALERT_AFTER_ATTEMPTS`` times or
  more: something they hold keeps failing (their ``last_error`` says what).
- ``relays_paused``: operators paused every relay (``event_log.control``).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection

from event_log import clickhouse, sql
from event_log.catalogue import retention_days_by_event_type
from event_log.conf import event_log_settings
from event_log.control import relays_paused
from event_log.query import DEFAULT_TIMEOUT, query_event_log
from event_log.retention import ttl_of

# Counts up to this are exact; past it the id span (an upper bound) is reported.
# Counting stops after this many primary-key entries, so it costs the same at 10M.
EXACT_COUNT_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    outbox_depth: int
    outbox_depth_exact: bool
    oldest_event_at: datetime | None
    batches_in_flight: int
    batches_stuck: int
    dead_letters: int
    dead_letters_exact: bool
    batches_delivered: int
    events_delivered: int
    events_dead_lettered: int
    last_delivered_at: datetime | None
    # Set by operators (event_log.control): every relay claims nothing while it is.
    relays_paused: bool = False

    @property
    def lag_seconds(self) -> float:
        if self.oldest_event_at is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - self.oldest_event_at).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("oldest_event_at", "last_delivered_at"):
            data[key] = data[key].isoformat() if data[key] else None
        data["lag_seconds"] = round(self.lag_seconds, 6)
        return data


def outbox_status() -> OutboxStatus:
    """The event log's figures, read in constant time (see the module docstring)."""
    with connection.cursor() as cur:
        cur.execute(
            sql.STATUS,
            {
                "counted": EXACT_COUNT_LIMIT + 1,
                "alert_after": event_log_settings().ALERT_AFTER_ATTEMPTS,
            },
        )
        (
            outbox_counted,
            outbox_span,
            oldest,
            batches,
            stuck,
            dead_counted,
            dead_span,
            delivered_batches,
            delivered,
            dead_lettered,
            last,
        ) = cur.fetchone()
    depth, depth_exact = _bounded(outbox_counted, outbox_span)
    dead, dead_exact = _bounded(dead_counted, dead_span)
    return OutboxStatus(
        outbox_depth=depth,
        outbox_depth_exact=depth_exact,
        oldest_event_at=oldest,
        batches_in_flight=batches,
        batches_stuck=stuck,
        dead_letters=dead,
        dead_letters_exact=dead_exact,
        batches_delivered=delivered_batches or 0,
        events_delivered=delivered or 0,
        events_dead_lettered=dead_lettered or 0,
        last_delivered_at=last,
        relays_paused=relays_paused(),
    )


def _bounded(counted: int, id_span: int | None) -> tuple[int, bool]:
    """(figure, exact): the count when it stopped short of the limit, else the id span."""
    if counted <= EXACT_COUNT_LIMIT:
        return counted, True
    return max(counted, id_span or 0), False


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A sealed batch not yet delivered."""

    id: uuid.UUID
    attempts: int
    first_id: int
    last_id: int
    lease_until: datetime
    last_error: str
    # True while no relay may take it: a relay holds it, or it waits out a back-off
    # after a failure (then ``last_error`` says which).
    leased: bool


def pending_batches(*, limit: int = 20) -> list[PendingBatch]:
    """The oldest sealed batches not yet delivered, at most ``limit``."""
    with connection.cursor() as cur:
        cur.execute(sql.PENDING_BATCHES, {"limit": limit})
        return [PendingBatch(*row) for row in cur.fetchall()]


def clickhouse_status(url: str | None = None, *, timeout: float | None = None) -> dict[str, Any]:
    """Row count of the event table, or the (masked) reason ClickHouse is unreachable.

    Also while a running stack holds the embedded engine: the count is then asked of
    the worker that holds it (``event_log.query``; ``via`` says who answered).
    """
    url = url or clickhouse.clickhouse_url()
    table = event_log_settings().CLICKHOUSE_TABLE
    try:
        result = query_event_log(
            f"SELECT count() FROM `{table}`",  # noqa: S608 (validated identifier)
            limit=1,
            url=url,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        )
        rows = result.rows[0][0]
        engine = query_event_log(
            "SELECT engine_full FROM system.tables"  # noqa: S608 (validated identifier)
            f" WHERE database = currentDatabase() AND name = '{table}'",
            limit=1,
            url=url,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        )
        ttl = ttl_of(engine.rows[0][0]) if engine.rows else None
    except Exception as exc:
        error = clickhouse.ClickHouseError.from_exception(exc)
        return {
            "url": clickhouse.mask_url(url),
            "reachable": False,
            "error": clickhouse.mask_url(str(error))[:500],
        }
    return {
        "url": clickhouse.mask_url(url),
        "reachable": True,
        "rows": int(rows),
        "ttl": ttl,
        "via": result.via,
    }


def retention_status() -> dict[str, Any]:
    """The retentions, in days (0: kept for ever): the event table's, the event types'
    own (``retention_days`` in the catalogue, which replace the table's for them), and
    the dead letters'."""
    config = event_log_settings()
    return {
        "event_log_days": config.RETENTION_DAYS,
        "event_type_days": retention_days_by_event_type(),
        "dead_letter_days": config.DEAD_LETTER_RETENTION_DAYS,
    }
