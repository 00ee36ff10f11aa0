"""The sink-side backstop: does ClickHouse hold what PostgreSQL says was delivered, once?

Every delivered batch leaves a record in PostgreSQL (``event_log_delivery``: its
event ids and the span of their event times), written in the transaction that
deletes the batch's rows and kept for ``EVENT_LOG_DELIVERY_RETENTION``. For a
window, :func:`verify_deliveries` reports

- **missing**: event ids recorded as delivered in the window that ClickHouse lacks;
- **duplicated**: event ids ClickHouse holds more than once, among the events
  looked at — those of the recorded batches and those whose event time falls in
  the window.

ClickHouse is read by event time: each group of records is looked up over the
event-time spans of its batches, which the table's monthly partitions and sorting
key (event type, event time) narrow. Memory follows the ids of one group
(:data:`GROUP_EVENTS`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from clickhouse_connect.driver.client import Client
from django.db import connection

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError
from event_log.conf import event_log_settings
from event_log.models import Delivery, Verification

logger = structlog.get_logger(__name__)

# Records are checked in groups of about this many event ids, or of this many
# batches (each adds a time span to the query; max_query_size is 256 KiB).
GROUP_EVENTS = 200_000
GROUP_BATCHES = 1_000
# Findings stored with a Verification (the command prints them all).
STORED_FINDINGS = 1_000
# Widen each batch's span a little: spans are merged and looked up as ranges, and
# an edge case of rounding must never make an event look missing.
_SPAN_MARGIN = timedelta(seconds=1)

DELIVERIES = """
SELECT batch_id, event_ids, first_event_at, last_event_at
FROM event_log_delivery
WHERE delivered_at >= %(since)s AND delivered_at < %(until)s
ORDER BY delivered_at, batch_id
"""

STORED_COPIES = """
SELECT event_id, count() AS copies FROM {table}
WHERE {spans}
GROUP BY event_id
"""

DUPLICATES_BY_EVENT_TIME = """
SELECT event_id, count() AS copies FROM {table}
WHERE event_date_time >= toDateTime64(%(since)s, 6, 'UTC')
  AND event_date_time < toDateTime64(%(until)s, 6, 'UTC')
GROUP BY event_id
HAVING copies > 1
"""


@dataclass(slots=True)
class VerifyReport:
    """What one verification checked and found; ``clean`` when it found nothing."""

    since: datetime
    until: datetime
    batches: int = 0
    events: int = 0
    duplicated: dict[uuid.UUID, int] = field(default_factory=dict)  # id -> copies
    missing: set[uuid.UUID] = field(default_factory=set)

    @property
    def clean(self) -> bool:
        return not self.duplicated and not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "batches": self.batches,
            "events": self.events,
            "clean": self.clean,
            "duplicated": {str(k): v for k, v in sorted(self.duplicated.items())},
            "missing": sorted(str(event_id) for event_id in self.missing),
        }


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``90s``, ``15m``, ``2h``, ``7d`` (that long ago) or an ISO 8601 time (naive = UTC).

    Raises ValueError with a readable message otherwise.
    """
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return now - timedelta(seconds=float(match.group(1)) * unit)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 15m, 2h, 7d) nor an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def verify_deliveries(
    *, since: datetime, until: datetime | None = None, url: str | None = None
) -> VerifyReport:
    """Check the window [since, until) (until: now). Opens and closes its own client.

    Raises :class:`ClickHouseError` when ClickHouse cannot be read.
    """
    until = until or datetime.now(UTC)
    report = VerifyReport(since=since, until=until)
    table = f"`{event_log_settings().CLICKHOUSE_TABLE}`"
    try:
        with clickhouse.client(url) as ch:
            for group in _delivery_groups(since, until):
                _check_group(ch, table, group, report)
            rows = ch.query(
                DUPLICATES_BY_EVENT_TIME.format(table=table),
                parameters={"since": _naive(since), "until": _naive(until)},
            ).result_rows
    except ClickHouseError:
        raise
    except Exception as exc:
        raise ClickHouseError.from_exception(exc) from exc
    report.duplicated.update({row[0]: int(row[1]) for row in rows})
    return report


@dataclass(slots=True)
class _Group:
    batches: int = 0
    event_ids: set[uuid.UUID] = field(default_factory=set)
    spans: list[tuple[datetime, datetime]] = field(default_factory=list)


def _delivery_groups(since: datetime, until: datetime) -> Iterator[_Group]:
    group = _Group()
    with connection.cursor() as cur:
        cur.execute(DELIVERIES, {"since": since, "until": until})
        while rows := cur.fetchmany(500):
            for _batch_id, event_ids, first_at, last_at in rows:
                group.batches += 1
                group.event_ids.update(event_ids)
                group.spans.append((first_at, last_at))
                if len(group.event_ids) >= GROUP_EVENTS or group.batches >= GROUP_BATCHES:
                    yield group
                    group = _Group()
    if group.batches:
        yield group


def _check_group(ch: Client, table: str, group: _Group, report: VerifyReport) -> None:
    spans = _merged(group.spans)
    where = " OR ".join(
        f"event_date_time BETWEEN toDateTime64(%(from_{i})s, 6, 'UTC') "
        f"AND toDateTime64(%(to_{i})s, 6, 'UTC')"
        for i in range(len(spans))
    )
    parameters: dict[str, str] = {}
    for i, (first, last) in enumerate(spans):
        parameters[f"from_{i}"] = _naive(first - _SPAN_MARGIN)
        parameters[f"to_{i}"] = _naive(last + _SPAN_MARGIN)
    copies = {
        row[0]: int(row[1])
        for row in ch.query(
            STORED_COPIES.format(table=table, spans=where), parameters=parameters
        ).result_rows
    }
    report.batches += group.batches
    report.events += len(group.event_ids)
    report.missing |= group.event_ids - copies.keys()
    report.duplicated.update({event_id: n for event_id, n in copies.items() if n > 1})


def _merged(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Overlapping or near (within a minute) spans as one: fewer, wider ranges."""
    merged: list[tuple[datetime, datetime]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + timedelta(minutes=1):
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _naive(moment: datetime) -> str:
    """UTC text to the microsecond, read by ``toDateTime64(…, 6, 'UTC')``.

    A datetime parameter would be sent to the second, and the window's last second
    would then fall out of it.
    """
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def record_verification(report: VerifyReport) -> Verification:
    """Keep the outcome in PostgreSQL (for /metrics, whichever process ran it) and log it."""
    verification = Verification.objects.create(
        verified_at=datetime.now(UTC),
        since=report.since,
        until=report.until,
        batches=report.batches,
        events=report.events,
        duplicated=len(report.duplicated),
        missing=len(report.missing),
        findings={
            "duplicated": sorted(str(k) for k in report.duplicated)[:STORED_FINDINGS],
            "missing": sorted(str(k) for k in report.missing)[:STORED_FINDINGS],
        },
    )
    fields = {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "batches": report.batches,
        "events": report.events,
    }
    if report.clean:
        logger.info("event_log_verify_passed", **fields)
    else:
        logger.error(
            "event_log_verify_failed",
            duplicated=len(report.duplicated),
            missing=len(report.missing),
            duplicated_ids=sorted(str(k) for k in report.duplicated)[:20],
            missing_ids=sorted(str(k) for k in report.missing)[:20],
            **fields,
        )
    return verification


def purge_old_records(*, retention: float | None = None) -> int:
    """Delete delivery records and verifications older than the retention; returns how many."""
    if retention is None:
        retention = event_log_settings().DELIVERY_RETENTION
    cutoff = datetime.now(UTC) - timedelta(seconds=retention)
    deliveries, _ = Delivery.objects.filter(delivered_at__lt=cutoff).delete()
    verifications, _ = Verification.objects.filter(verified_at__lt=cutoff).delete()
    return deliveries + verifications
