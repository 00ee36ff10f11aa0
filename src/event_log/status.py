"""Read-only views of the event log's health, for the status command, /health and /metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection

from event_log import clickhouse, sql
from event_log.conf import event_log_settings


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    outbox_depth: int
    oldest_event_at: datetime | None
    batches_in_flight: int
    dead_letters: int
    batches_delivered: int
    events_delivered: int
    events_dead_lettered: int
    last_delivered_at: datetime | None

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
    with connection.cursor() as cur:
        cur.execute(sql.STATUS)
        depth, oldest, batches, dead, delivered_batches, delivered, dead_lettered, last = (
            cur.fetchone()
        )
    return OutboxStatus(
        outbox_depth=depth,
        oldest_event_at=oldest,
        batches_in_flight=batches,
        dead_letters=dead,
        batches_delivered=delivered_batches or 0,
        events_delivered=delivered or 0,
        events_dead_lettered=dead_lettered or 0,
        last_delivered_at=last,
    )


def clickhouse_status(url: str | None = None) -> dict[str, Any]:
    """Row count of the event table, or the (masked) reason ClickHouse is unreachable."""
    url = url or clickhouse.clickhouse_url()
    table = event_log_settings().CLICKHOUSE_TABLE
    try:
        with clickhouse.client(url) as ch:
            result = ch.query(f"SELECT count() FROM `{table}`")  # noqa: S608 (validated identifier)
            rows = result.result_rows[0][0]
    except Exception as exc:
        error = clickhouse.ClickHouseError.from_exception(exc)
        return {"url": clickhouse.mask_url(url), "reachable": False, "error": str(error)[:500]}
    return {"url": clickhouse.mask_url(url), "reachable": True, "rows": int(rows)}
