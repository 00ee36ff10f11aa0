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

:func:`verify_chain` then walks the batch chain (event_log.chain) over the entries
recorded in the window and reports, with batch ids:

- **missing** rows (an entry's row ClickHouse lacks; a batch whose events are all
  older than the shortest retention, ``EVENT_LOG_RETENTION_DAYS`` or an event type's
  own, is counted as *expired* instead);
- **altered** rows (held, but their digest, or their ``batch_id``, is not the
  entry's, nor that of a later erasure);
- **extra** rows (in the spans looked at, but in no entry of their batch);
- **duplicated** event ids;
- a **broken chain**: an entry whose digest does not follow from the previous one and
  its own rows (rewritten), a gap in the positions, a head that is not the last
  entry, or a ClickHouse copy that disagrees with PostgreSQL's ledger. Entries the
  copy lacks (the relay's copy failed) are written to it on the way.

:func:`verify_log` runs both; ``manage.py event_log_verify`` and the Beat task call it.
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

from event_log import chain, clickhouse, sql
from event_log.catalogue import retention_days_by_event_type
from event_log.clickhouse import ClickHouseError
from event_log.conf import event_log_settings
from event_log.models import Delivery, Verification

logger = structlog.get_logger(__name__)

# Records are checked in groups of about this many event ids, or of this many
# batches (each adds a time span to the query; max_query_size is 256 KiB).
GROUP_EVENTS = 200_000
GROUP_BATCHES = 1_000
# The batch chain's rows are checked in groups of about this many rows, or of this
# many batches (their ids and spans are inlined in the query: max_query_size).
CHAIN_GROUP_EVENTS = 100_000
CHAIN_GROUP_BATCHES = 500
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
    # The batch chain's findings: event id -> the batch it belongs (or claims) to.
    altered: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    extra: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    missing_batches: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    chain: ChainReport | None = None

    @property
    def clean(self) -> bool:
        return not (
            self.duplicated
            or self.missing
            or self.altered
            or self.extra
            or (self.chain is not None and self.chain.breaks)
        )

    @property
    def failures(self) -> int:
        breaks = len(self.chain.breaks) if self.chain is not None else 0
        return (
            len(self.duplicated) + len(self.missing) + len(self.altered) + len(self.extra) + breaks
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "batches": self.batches,
            "events": self.events,
            "clean": self.clean,
            "duplicated": {str(k): v for k, v in sorted(self.duplicated.items())},
            "missing": sorted(str(event_id) for event_id in self.missing),
            "altered": {str(k): str(v) for k, v in sorted(self.altered.items())},
            "extra": {str(k): str(v) for k, v in sorted(self.extra.items())},
            "missing_batches": {str(k): str(v) for k, v in sorted(self.missing_batches.items())},
            "chain": self.chain.as_dict() if self.chain is not None else None,
        }


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where the chain does not hold: the entry's position, its batch and what is wrong."""

    position: int
    batch_id: uuid.UUID | None
    problem: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "batch_id": str(self.batch_id) if self.batch_id else None,
            "problem": self.problem,
        }


@dataclass(slots=True)
class ChainReport:
    """What the walk over the chain's entries of the window saw."""

    entries: int = 0
    first_position: int | None = None
    last_position: int | None = None
    head_position: int = 0
    head_digest: str = chain.GENESIS.hex()
    expired_batches: int = 0
    unchained_rows: int = 0  # rows older than the chain, with no batch id
    copied: int = 0  # entries written to ClickHouse's copy by this run
    breaks: list[ChainBreak] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "head": {"position": self.head_position, "digest": self.head_digest},
            "expired_batches": self.expired_batches,
            "unchained_rows": self.unchained_rows,
            "copied": self.copied,
            "breaks": [b.as_dict() for b in self.breaks],
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


def verify_log(
    *, since: datetime, until: datetime | None = None, url: str | None = None
) -> VerifyReport:
    """The delivery records' check, then the batch chain's (one report). Raises
    :class:`ClickHouseError` when ClickHouse cannot be read."""
    report = verify_deliveries(since=since, until=until, url=url)
    try:
        with clickhouse.client(url) as ch:
            verify_chain(ch, report)
    except ClickHouseError:
        raise
    except Exception as exc:
        raise ClickHouseError.from_exception(exc) from exc
    return report


def chain_head() -> dict[str, Any]:
    """The chain's head, to keep outside both databases (``event_log_verify --head``)."""
    head, _ = _head_and_last()
    return head


def _head_and_last() -> tuple[dict[str, Any], tuple[int, str | None]]:
    """The head, and the last entry's (position, digest), as of one moment."""
    with connection.cursor() as cur:
        cur.execute(sql.CHAIN_HEAD)
        row = cur.fetchone()
    if row is None:
        return {"position": 0, "digest": chain.GENESIS.hex(), "started_at": None}, (0, None)
    position, digest, started_at, last_position, last_digest = row
    head = {
        "position": int(position),
        "digest": bytes(digest).hex(),
        "started_at": started_at.isoformat(),
    }
    if last_position is None:
        return head, (0, None)
    return head, (int(last_position), bytes(last_digest).hex())


def _fetch_entries(statement: str, parameters: dict[str, Any]) -> list[chain.Entry]:
    with connection.cursor() as cur:
        cur.execute(statement, parameters)
        return [chain.Entry.from_row(row) for row in cur.fetchall()]


def verify_chain(ch: Client, report: VerifyReport) -> ChainReport:
    """Walk the chain's entries recorded in the report's window and check the rows
    ClickHouse holds against them; adds its findings to ``report``."""
    config = event_log_settings()
    table = f"`{config.CLICKHOUSE_TABLE}`"
    found = ChainReport()
    report.chain = found
    entries = _fetch_entries(
        sql.CHAIN_ENTRIES_RECORDED, {"since": report.since, "until": report.until}
    )
    head, last = _head_and_last()
    found.head_position, found.head_digest = head["position"], head["digest"]
    _walk(entries, found, last=last)
    if entries:
        _check_copy(ch, config.CLICKHOUSE_TABLE, entries, found)
    started_at = datetime.fromisoformat(head["started_at"]) if head["started_at"] else report.until
    _check_rows(ch, table, entries, report, found, started_at=started_at)
    return found


def _walk(entries: list[chain.Entry], found: ChainReport, *, last: tuple[int, str | None]) -> None:
    """Each entry follows from the one before it and from its own rows; the last one
    is the head (when the window reaches it)."""
    found.entries = len(entries)
    if entries:
        found.first_position, found.last_position = entries[0].position, entries[-1].position
        before = entries[0].position - 1
        if before == 0:
            prev_digest = chain.GENESIS
        else:
            previous = _fetch_entries(sql.CHAIN_ENTRY_AT, {"position": before})
            if not previous:
                found.breaks.append(
                    ChainBreak(before, None, "the entry before the window is missing (a gap)")
                )
            prev_digest = previous[0].digest if previous else entries[0].prev_digest
        expected_position = entries[0].position
        for entry in entries:
            if entry.position != expected_position:
                found.breaks.append(
                    ChainBreak(
                        expected_position,
                        None,
                        f"entries {expected_position} to {entry.position - 1} are missing (a gap)",
                    )
                )
            if entry.prev_digest != prev_digest:
                found.breaks.append(
                    ChainBreak(
                        entry.position,
                        entry.batch_id,
                        "its previous digest is not the previous entry's digest",
                    )
                )
            recomputed = chain.entry_digest(entry.kind, entry.batch_id, entry.row_digests)
            if (
                recomputed != entry.entry_digest
                or chain.link(entry.prev_digest, entry.position, recomputed) != entry.digest
                or len(entry.row_digests) != entry.rows * chain.PAIR_BYTES
            ):
                found.breaks.append(
                    ChainBreak(
                        entry.position,
                        entry.batch_id,
                        "its digest does not follow from its rows (the entry was rewritten)",
                    )
                )
            prev_digest = entry.digest
            expected_position = entry.position + 1
    last_position, last_digest = last
    if last_position != found.head_position or (
        last_digest is not None and last_digest != found.head_digest
    ):
        found.breaks.append(
            ChainBreak(
                found.head_position,
                None,
                f"the head (position {found.head_position}) is not the last entry "
                f"(position {last_position})",
            )
        )


def _check_copy(ch: Client, table: str, entries: list[chain.Entry], found: ChainReport) -> None:
    """PostgreSQL's entries against ClickHouse's copy; what the copy lacks is written."""
    copies = chain.stored_copies(
        ch, table=table, first=entries[0].position, last=entries[-1].position
    )
    lacking = []
    for entry in entries:
        held = copies.pop(entry.position, None)
        if held is None:
            lacking.append(entry)
        elif held != {entry.digest.hex()}:
            found.breaks.append(
                ChainBreak(
                    entry.position,
                    entry.batch_id,
                    "ClickHouse's copy of the entry has another digest",
                )
            )
    for position in sorted(copies):
        found.breaks.append(
            ChainBreak(position, None, "ClickHouse's copy has an entry PostgreSQL's ledger lacks")
        )
    if lacking:
        chain.copy_to_clickhouse(ch, lacking, table=table)
        found.copied = len(lacking)
        logger.info("chain_entries_copied", entries=len(lacking))


@dataclass(slots=True)
class _Expected:
    batch_id: uuid.UUID
    digest: bytes
    expired: bool  # the TTL may have removed it
    copies: int = 0


Row = tuple[uuid.UUID, uuid.UUID, datetime]  # event id, batch id, event time


def _check_rows(
    ch: Client,
    table: str,
    entries: list[chain.Entry],
    report: VerifyReport,
    found: ChainReport,
    *,
    started_at: datetime,
) -> None:
    """Every row of the entries' spans against its entry, a group of entries at a time
    (memory follows :data:`GROUP_EVENTS`), then the window's other rows; rows no entry
    of a group names are settled at the end (:func:`_resolve_unknown`)."""
    erasures: dict[uuid.UUID, bytes] = {}
    if entries:
        for erasure in _fetch_entries(sql.CHAIN_ERASURES_FROM, {"position": entries[0].position}):
            erasures.update(erasure.pairs())
    unknown: list[Row] = []
    window_spans: Spans = {}
    for expected, spans in _entry_groups(entries, report, found):
        for event_id in erasures.keys() & expected.keys():
            expected[event_id].digest = erasures[event_id]
        window_spans |= spans
        merged = _merged(list(spans.values()))
        rows = _stream_rows(ch, table, merged, digest=True, batch_ids=set(spans))
        for event_id, batch_id, at, digest in rows:
            want = expected.get(event_id)
            if want is None:
                unknown.append((event_id, batch_id, at))
                continue
            want.copies += 1
            if batch_id != want.batch_id or digest != want.digest:
                report.altered[event_id] = want.batch_id
        for event_id, want in expected.items():
            if want.copies > 1:
                report.duplicated[event_id] = want.copies
            elif want.copies == 0 and not want.expired:
                report.missing.add(event_id)
                report.missing_batches[event_id] = want.batch_id
    # Rows of the window's event times that no group read: of no batch of the window
    # (forged, older than the chain, or of a batch finished outside the window), or
    # claiming one of its batches outside that batch's span (forged).
    window = [(report.since, report.until)]
    for event_id, batch_id, at, _ in _stream_rows(ch, table, window, digest=False):
        span = window_spans.get(batch_id)
        moment = at if at.tzinfo else at.replace(tzinfo=UTC)
        if span is None or not span[0] - _SPAN_MARGIN <= moment <= span[1] + _SPAN_MARGIN:
            unknown.append((event_id, batch_id, at))
    _resolve_unknown(unknown, report, found, started_at=started_at)


Spans = dict[uuid.UUID, tuple[datetime, datetime]]  # batch id -> its event-time span


def _entry_groups(
    entries: list[chain.Entry], report: VerifyReport, found: ChainReport
) -> Iterator[tuple[dict[uuid.UUID, _Expected], Spans]]:
    """The window's delivered rows, in groups: each with its batch and digest, and each
    batch's event-time span (where its rows are read)."""
    cutoff = _retention_cutoff(report.until)
    expected: dict[uuid.UUID, _Expected] = {}
    spans: Spans = {}
    for entry in entries:
        if entry.kind != chain.DELIVERY or entry.batch_id is None:
            continue
        first, last = entry.first_event_at, entry.last_event_at
        if cutoff is not None and last is not None and last < cutoff:
            found.expired_batches += 1
            continue
        # A batch straddling the cutoff may have lost its oldest rows to the TTL.
        straddles = cutoff is not None and first is not None and first < cutoff
        for event_id, digest in entry.pairs():
            expected[event_id] = _Expected(entry.batch_id, digest, straddles)
        if first is not None and last is not None:
            # A batch finished in parts has several entries: one span covers them all.
            known = spans.get(entry.batch_id)
            spans[entry.batch_id] = (
                (min(known[0], first), max(known[1], last)) if known else (first, last)
            )
        if len(expected) >= CHAIN_GROUP_EVENTS or len(spans) >= CHAIN_GROUP_BATCHES:
            yield expected, spans
            expected, spans = {}, {}
    if expected:
        yield expected, spans


def _span_condition(
    spans: list[tuple[datetime, datetime]], parameters: dict[str, str], prefix: str
) -> str:
    for i, (first, last) in enumerate(spans):
        parameters[f"{prefix}from_{i}"] = _naive(first - _SPAN_MARGIN)
        parameters[f"{prefix}to_{i}"] = _naive(last + _SPAN_MARGIN)
    return " OR ".join(
        f"event_date_time BETWEEN toDateTime64(%({prefix}from_{i})s, 6, 'UTC') "
        f"AND toDateTime64(%({prefix}to_{i})s, 6, 'UTC')"
        for i in range(len(spans))
    )


def _stream_rows(
    ch: Client,
    table: str,
    spans: list[tuple[datetime, datetime]],
    *,
    digest: bool,
    batch_ids: set[uuid.UUID] | None = None,
) -> Iterator[tuple[Any, ...]]:
    """(event id, batch id, event time, row digest or None) of the rows in ``spans``
    (and of ``batch_ids``), streamed."""
    if not spans:
        return
    parameters: dict[str, str] = {}
    where = f"({_span_condition(spans, parameters, '')})"
    if batch_ids:
        # The spans narrow the partitions and granules read; the batch ids, the rows.
        where += f" AND batch_id IN ({', '.join(f"'{b}'" for b in sorted(batch_ids))})"
    statement = sql.CLICKHOUSE_ROW_DIGESTS.format(
        digest=sql.row_digest_sql() if digest else "NULL", table=table, where=where
    )
    with ch.query_row_block_stream(statement, parameters=parameters) as stream:
        for block in stream:
            yield from block


def _resolve_unknown(
    unknown: list[Row], report: VerifyReport, found: ChainReport, *, started_at: datetime
) -> None:
    """Rows no entry of their group names: delivered in a batch of another group or
    outside the window (fine), older than the chain (counted), or extra (a finding)."""
    batch_ids = {batch_id for _, batch_id, _ in unknown}
    batch_ids.discard(chain.NIL)
    known: set[tuple[uuid.UUID, uuid.UUID]] = set()
    in_flight: set[uuid.UUID] = set()
    if batch_ids:
        # Rows of a batch not finished yet: ClickHouse has them before its entry exists.
        with connection.cursor() as cur:
            cur.execute(sql.BATCHES_IN_FLIGHT, {"batch_ids": sorted(batch_ids)})
            in_flight = {row[0] for row in cur.fetchall()}
        for entry in _fetch_entries(
            sql.CHAIN_DELIVERIES_OF_BATCHES, {"batch_ids": sorted(batch_ids)}
        ):
            assert entry.batch_id is not None  # noqa: S101 (deliveries have one)
            known.update((entry.batch_id, event_id) for event_id, _ in entry.pairs())
    naive_start = _as_naive(started_at)
    for event_id, batch_id, at in unknown:
        if (batch_id, event_id) in known or batch_id in in_flight:
            continue
        if batch_id == chain.NIL and _as_naive(at) < naive_start:
            found.unchained_rows += 1
            continue
        report.extra[event_id] = batch_id


def _as_naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


@dataclass(slots=True)
class _Group:
    batches: int = 0
    event_ids: set[uuid.UUID] = field(default_factory=set)
    spans: list[tuple[datetime, datetime]] = field(default_factory=list)
    # Ids of batches with events older than the shortest retention: the TTL may have
    # removed them, so their absence is no finding.
    expirable: set[uuid.UUID] = field(default_factory=set)


def _retention_cutoff(until: datetime) -> datetime | None:
    """Events older than this may have been removed by the TTL: the shortest of
    ``EVENT_LOG_RETENTION_DAYS`` and the event types' own retentions (0: for ever)."""
    retentions = [event_log_settings().RETENTION_DAYS, *retention_days_by_event_type().values()]
    days = min((d for d in retentions if d), default=0)
    return until - timedelta(days=days) if days else None


def _delivery_groups(since: datetime, until: datetime) -> Iterator[_Group]:
    group = _Group()
    cutoff = _retention_cutoff(until)
    with connection.cursor() as cur:
        cur.execute(DELIVERIES, {"since": since, "until": until})
        while rows := cur.fetchmany(500):
            for _batch_id, event_ids, first_at, last_at in rows:
                group.batches += 1
                group.event_ids.update(event_ids)
                group.spans.append((first_at, last_at))
                if cutoff is not None and first_at < cutoff:
                    group.expirable.update(event_ids)
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
    report.missing |= group.event_ids - copies.keys() - group.expirable
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
        altered=len(report.altered),
        extra=len(report.extra),
        chain_breaks=len(report.chain.breaks) if report.chain else 0,
        findings={
            "duplicated": sorted(str(k) for k in report.duplicated)[:STORED_FINDINGS],
            "missing": sorted(str(k) for k in report.missing)[:STORED_FINDINGS],
            "altered": sorted(str(k) for k in report.altered)[:STORED_FINDINGS],
            "extra": sorted(str(k) for k in report.extra)[:STORED_FINDINGS],
            "chain": [b.as_dict() for b in report.chain.breaks][:STORED_FINDINGS]
            if report.chain
            else [],
        },
    )
    fields = {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "batches": report.batches,
        "events": report.events,
    }
    if report.chain is not None:
        # The anchor: an operator (or a log shipper) keeps this outside both databases;
        # a later head that does not descend from it means history was rewritten.
        logger.info(
            "event_log_chain_head_seen",
            position=report.chain.head_position,
            digest=report.chain.head_digest,
        )
    if report.clean:
        logger.info("event_log_verify_passed", **fields)
    else:
        breaks = report.chain.breaks if report.chain else []
        logger.error(
            "event_log_verify_failed",
            duplicated=len(report.duplicated),
            missing=len(report.missing),
            altered=len(report.altered),
            extra=len(report.extra),
            chain_breaks=len(breaks),
            duplicated_ids=sorted(str(k) for k in report.duplicated)[:20],
            missing_ids=sorted(str(k) for k in report.missing)[:20],
            altered_ids=sorted(str(k) for k in report.altered)[:20],
            extra_ids=sorted(str(k) for k in report.extra)[:20],
            chain_break_positions=[b.position for b in breaks][:20],
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
