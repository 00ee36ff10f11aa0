"""``publish()``: write events to the outbox inside the caller's transaction."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import structlog
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from pydantic_core import PydanticSerializationError

from event_log import sql
from event_log.events import Event
from event_log.kick import relay_run_on_commit
from event_log.metrics import EVENTS_PUBLISHED

logger = structlog.get_logger(__name__)


class PublishError(Exception):
    """``publish()`` refused its input; nothing was written."""


class NotAnEventError(PublishError, TypeError):
    pass


class EventSerializationError(PublishError, ValueError):
    pass


class NoTransactionError(PublishError, RuntimeError):
    pass


def publish(*events: Event, using: str = DEFAULT_DB_ALIAS) -> list[uuid.UUID]:
    """Add ``events`` to the outbox as part of the current transaction.

    One INSERT per 10,000 events (PostgreSQL's parameter limit); each event gets
    a new ``event_id`` and the current UTC time as ``event_date_time``. The
    events reach ClickHouse if and only if the surrounding transaction commits;
    a relay run is requested once per transaction, after the commit.

    Must be called inside ``transaction.atomic()`` (use cases always are): an
    event published in autocommit mode would be committed even if the business
    write that it describes then fails, so :class:`NoTransactionError` is raised.

    Raises :class:`NotAnEventError` or :class:`EventSerializationError` before
    anything is written. Returns the new event ids, in order.
    """
    if not events:
        return []
    for event in events:
        if not isinstance(event, Event):
            raise NotAnEventError(f"publish() takes Event instances, got {type(event).__name__}")
    conn = connections[using]
    if not conn.in_atomic_block:
        raise NoTransactionError(
            "publish() must run inside transaction.atomic() so events commit with the "
            "business write"
        )
    contexts = []
    for event in events:
        try:
            contexts.append(event.model_dump_json())
        except (PydanticSerializationError, ValueError, TypeError) as exc:
            raise EventSerializationError(
                f"{type(event).__name__} cannot be serialized to JSON: {exc}"
            ) from exc

    now = datetime.now(UTC)
    environment = settings.ENVIRONMENT
    event_ids = [uuid.uuid4() for _ in events]
    rows = [
        (event_id, event.event_type, now, environment, context, event.metadata_version)
        for event_id, event, context in zip(event_ids, events, contexts, strict=True)
    ]
    with conn.cursor() as cur:
        for start in range(0, len(rows), sql.MAX_EVENTS_PER_INSERT):
            chunk = rows[start : start + sql.MAX_EVENTS_PER_INSERT]
            cur.execute(
                sql.insert_events_statement(len(chunk)),
                [value for row in chunk for value in row],
            )
    relay_run_on_commit(using)
    EVENTS_PUBLISHED.inc(len(events))
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "outbox_events_published",
            events=len(events),
            event_types=sorted({event.event_type for event in events}),
            event_ids=[str(event_id) for event_id in event_ids[:20]],
        )
    return event_ids
