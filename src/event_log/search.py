"""Searching the event log: what happened to a subject, what a request did, what an
actor did between two times.

One function, :func:`search_events`, serves ``manage.py event_log_search`` and the
admin's "Event log" page. Input is parsed into :class:`SearchFilters` first
(:func:`parse_filters`; bad input raises :class:`SearchInputError` and nothing is
sent). The statement is ``sql.SEARCH_EVENTS`` with every value a quoted literal, and
it runs through :func:`event_log.query.query_event_log`: straight to a server as the
read-only user of ``CLICKHOUSE_READER_URL``, or to the embedded engine (through the
process that holds it, ADR 0011), always with ``readonly = 1``.

Every search is logged as ``event_log_searched`` and published as the event
``event_log_searched`` (:class:`event_log.events.EventLogSearched`): who searched (a
user id, or the command), the filters and how many events came back. The filters are identifiers
(event types, ``kind:id`` references, a request id, times), never field values such
as an e-mail address, so the line carries no personal values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.db import transaction

from event_log import clickhouse, sql
from event_log.conf import event_log_settings
from event_log.events import EventLogSearched
from event_log.publisher import publish
from event_log.query import DEFAULT_TIMEOUT, query_event_log

logger = structlog.get_logger(__name__)

MAX_PAGE_SIZE = 1_000
MAX_OFFSET = 1_000_000
REQUEST_ID_MAX_LENGTH = 128
REF_ID_MAX_LENGTH = 255
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]{0,254}")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")
_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class SearchInputError(ValueError):
    """A filter that cannot be understood; nothing was sent to ClickHouse.

    ``field`` names the filter (``subject``, ``since``, …); the text starts with the
    command's option (``--subject: …``), :attr:`reason` is the text without it.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"--{field.replace('_', '-')}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Ref:
    """``kind:id`` (``user:42``) or a kind alone (``system``): a subject or an actor."""

    kind: str
    id: str | None = None

    def __str__(self) -> str:
        return self.kind if self.id is None else f"{self.kind}:{self.id}"


@dataclass(frozen=True, slots=True)
class SearchFilters:
    event_types: tuple[str, ...] = ()
    subject: Ref | None = None
    actor: Ref | None = None
    request_id: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def as_log(self) -> dict[str, Any]:
        """The filters given, as text: what ``event_log_searched`` records."""
        values: dict[str, Any] = {
            "event_types": list(self.event_types) or None,
            "subject": str(self.subject) if self.subject else None,
            "actor": str(self.actor) if self.actor else None,
            "request_id": self.request_id,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class FoundEvent:
    event_id: str
    event_date_time: str  # ISO 8601, UTC
    event_type: str
    environment: str
    metadata_version: int
    actor: str  # "kind:id", the kind alone, or "" when unknown
    subject: str
    request_id: str
    traceparent: str
    event_context: Any  # the JSON, parsed (the text itself if it is not JSON)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class SearchPage:
    events: list[FoundEvent]
    offset: int
    limit: int
    more: bool  # a next page holds at least one more event
    via: str = "server"
    filters: SearchFilters = field(default_factory=SearchFilters)

    def as_dict(self) -> dict[str, Any]:
        return {
            "filters": self.filters.as_log(),
            "offset": self.offset,
            "limit": self.limit,
            "more": self.more,
            "events": [event.as_dict() for event in self.events],
        }


def parse_ref(text: str, *, option: str) -> Ref:
    """``user:42`` → ``Ref("user", "42")``; ``system`` → ``Ref("system")``."""
    kind, colon, ref_id = text.strip().partition(":")
    if not _KIND.fullmatch(kind) or (colon and not ref_id.strip()):
        raise SearchInputError(
            option,
            f"{_shown(text)} is not a reference: give kind:id (user:42) or a kind alone "
            "(system); the kind is lower-case letters, digits and _",
        )
    if len(ref_id) > REF_ID_MAX_LENGTH:
        raise SearchInputError(option, f"the id is longer than {REF_ID_MAX_LENGTH} characters")
    return Ref(kind, ref_id if colon else None)


def parse_time(text: str, *, option: str, now: datetime | None = None) -> datetime:
    """A duration back from now (``90s``, ``30m``, ``2h``, ``7d``, ``1w``) or an ISO 8601
    date or time (``2026-11-30``, ``2026-11-30T08:00``, ``…Z``, ``…+01:00``; a time
    without an offset is UTC). Returns an aware datetime in UTC."""
    value = text.strip()
    duration = _DURATION.fullmatch(value)
    if duration:
        amount, unit = duration.groups()
        moment = (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
        return moment.astimezone(UTC)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
        else:
            parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SearchInputError(
            option,
            f"{_shown(text)} is neither a duration (90s, 30m, 2h, 7d, 1w) nor an ISO 8601 "
            "date or time (2026-11-30, 2026-11-30T08:00Z)",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_filters(
    *,
    event_types: Iterable[str] = (),
    subject: str | None = None,
    actor: str | None = None,
    request_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
    now: datetime | None = None,
) -> SearchFilters:
    """Filters from text as people type it; raises :class:`SearchInputError`."""
    types = tuple(dict.fromkeys(name.strip() for name in event_types if name.strip()))
    for name in types:
        if not _EVENT_TYPE.fullmatch(name):
            raise SearchInputError(
                "type", f"{_shown(name)} is not an event type (snake_case, e.g. user_created)"
            )
    request = request_id.strip() if request_id else None
    if request is not None and (len(request) > REQUEST_ID_MAX_LENGTH or not request.isprintable()):
        raise SearchInputError(
            "request_id", f"at most {REQUEST_ID_MAX_LENGTH} printable characters"
        )
    now = now or datetime.now(UTC)
    start = parse_time(since, option="since", now=now) if since else None
    end = parse_time(until, option="until", now=now) if until else None
    if start and end and start >= end:
        raise SearchInputError("since", f"{start.isoformat()} is not before until")
    return SearchFilters(
        event_types=types,
        subject=parse_ref(subject, option="subject") if subject else None,
        actor=parse_ref(actor, option="actor") if actor else None,
        request_id=request or None,
        since=start,
        until=end,
    )


def search_statement(filters: SearchFilters, *, limit: int, offset: int = 0) -> str:
    """``sql.SEARCH_EVENTS`` for ``filters``: one more row than ``limit``, so that the
    caller knows whether a next page exists."""
    check_page(limit=limit, offset=offset)
    quote = clickhouse.quote
    where = []
    if filters.event_types:
        where.append(f"event_type IN ({', '.join(quote(name) for name in filters.event_types)})")
    for prefix, ref in (("subject", filters.subject), ("actor", filters.actor)):
        if ref is not None:
            where.append(f"{prefix}_type = {quote(ref.kind)}")
            if ref.id is not None:
                where.append(f"{prefix}_id = {quote(ref.id)}")
    if filters.request_id is not None:
        where.append(f"request_id = {quote(filters.request_id)}")
    if filters.since is not None:
        where.append(f"event_date_time >= {_time_literal(filters.since)}")
    if filters.until is not None:
        where.append(f"event_date_time < {_time_literal(filters.until)}")
    return sql.SEARCH_EVENTS.format(
        table=event_log_settings().CLICKHOUSE_TABLE,
        where="\n  AND ".join(where) or "1",
        limit=limit + 1,
        offset=offset,
    )


def check_page(*, limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise SearchInputError("limit", f"must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise SearchInputError("offset", f"must be between 0 and {MAX_OFFSET}, got {offset}")


def search_events(
    filters: SearchFilters,
    *,
    searcher: str,
    limit: int = 100,
    offset: int = 0,
    output: str = "table",
    timeout: float = DEFAULT_TIMEOUT,
) -> SearchPage:
    """One page of the events matching ``filters``, newest first, logged as
    ``event_log_searched`` with ``searcher`` (``user:<id>`` or ``command:<name>``) and
    published as an :class:`~event_log.events.EventLogSearched` event, so the read
    enters the audit trail too. The page is returned only once that event is in the
    outbox: a search that cannot be recorded is not answered.

    Raises :class:`SearchInputError` (nothing sent) and
    :class:`event_log.clickhouse.ClickHouseError` (also ``EngineBusyError``).
    """
    statement = search_statement(filters, limit=limit, offset=offset)
    result = query_event_log(statement, limit=limit + 1, url=reader_url(), timeout=timeout)
    rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
    events = [_found(row) for row in rows[:limit]]
    with transaction.atomic():
        publish(
            EventLogSearched(
                searcher=searcher,
                event_types=list(filters.event_types),
                subject_filter=str(filters.subject) if filters.subject else None,
                actor_filter=str(filters.actor) if filters.actor else None,
                request_id_filter=filters.request_id,
                since=filters.since,
                until=filters.until,
                output=output,
                events_found=len(events),
            )
        )
    logger.info(
        "event_log_searched",
        searcher=searcher,
        filters=filters.as_log(),
        limit=limit,
        offset=offset,
        output=output,
        events=len(events),
        via=result.via,
    )
    return SearchPage(events, offset, limit, len(rows) > limit, result.via, filters)


def reader_url() -> str:
    """``CLICKHOUSE_READER_URL``, or ``CLICKHOUSE_URL`` when it is empty."""
    return str(getattr(settings, "CLICKHOUSE_READER_URL", "") or settings.CLICKHOUSE_URL)


def _found(row: dict[str, Any]) -> FoundEvent:
    text = row["event_context"]
    try:
        context = json.loads(text)
    except ValueError:
        context = text
    return FoundEvent(
        event_id=str(row["event_id"]),
        event_date_time=_utc_text(row["event_date_time"]),
        event_type=row["event_type"],
        environment=row["environment"],
        metadata_version=int(row["metadata_version"]),
        actor=_ref_text(row["actor_type"], row["actor_id"]),
        subject=_ref_text(row["subject_type"], row["subject_id"]),
        request_id=row["request_id"],
        traceparent=row["traceparent"],
        event_context=context,
    )


def _ref_text(kind: str, ref_id: str) -> str:
    return f"{kind}:{ref_id}" if kind and ref_id else kind or ref_id


def _utc_text(value: Any) -> str:
    """A time as ISO 8601 in UTC with a ``Z``, whichever way it reached here."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _time_literal(moment: datetime) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return f"toDateTime64({clickhouse.quote(text)}, 6, 'UTC')"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "…")
