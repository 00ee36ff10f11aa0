"""``publish()``: write events to the outbox inside the caller's transaction."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import structlog
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections
from pydantic_core import PydanticSerializationError

from event_log import envelope, sql
from event_log.events import (
    ENVIRONMENT_MAX_LENGTH,
    EVENT_TYPE_MAX_LENGTH,
    METADATA_VERSION_MAX,
    SUBJECT_ID_MAX_LENGTH,
    Event,
    event_context_json,
)
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


class InvalidEventError(PublishError, ValueError):
    """The event's class gives an ``event_type`` or ``metadata_version`` the outbox
    cannot hold (changed after the class was defined, which checks them), or its
    subject's id is longer than its column or holds a NUL character."""


class InvalidEnvironmentError(PublishError, ImproperlyConfigured):
    """``settings.ENVIRONMENT`` does not fit the outbox (system check event_log.E003)."""


def publish(*events: Event, using: str = DEFAULT_DB_ALIAS) -> list[uuid.UUID]:
    """Add ``events`` to the outbox as part of the current transaction.

    One INSERT per 5,000 events (PostgreSQL's parameter limit); each event gets
    a new ``event_id``, the current UTC time as ``event_date_time`` and the envelope:
    its subject (declared on its class) and the actor, request id and trace of the
    code publishing it (:mod:`event_log.envelope`). The
    events reach ClickHouse if and only if the surrounding transaction commits;
    a relay run is requested once per transaction, after the commit.

    Must be called inside ``transaction.atomic()`` (use cases always are): an
    event published in autocommit mode would be committed even if the business
    write that it describes then fails, so :class:`NoTransactionError` is raised.

    Raises a :class:`PublishError` before anything is written, so the caller's
    transaction stays usable: :class:`NotAnEventError`,
    :class:`EventSerializationError` (not JSON, or NaN/±inf in a field),
    :class:`InvalidEventError`, :class:`InvalidEnvironmentError`. Every value is
    checked against its column here: the database never refuses the INSERT (which
    would abort the transaction). Returns the new event ids, in order.
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
    environment = environment_checked(settings.ENVIRONMENT)
    for cls in {type(event) for event in events}:
        _check_columns(cls)
    contexts = [_serialize(event) for event in events]
    subjects = [_subject(event) for event in events]
    actor_type, actor_id, request_id, traceparent = envelope.current()

    now = datetime.now(UTC)
    event_ids = [uuid.uuid4() for _ in events]
    rows = [
        (
            event_id,
            event.event_type,
            now,
            environment,
            context,
            event.metadata_version,
            actor_type,
            actor_id,
            subject_type,
            subject_id,
            request_id,
            traceparent,
        )
        for event_id, event, context, (subject_type, subject_id) in zip(
            event_ids, events, contexts, subjects, strict=True
        )
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


def environment_checked(environment: object) -> str:
    """``environment`` if the outbox's column can hold it, else InvalidEnvironmentError."""
    if not isinstance(environment, str) or "\x00" in environment:
        raise InvalidEnvironmentError("ENVIRONMENT must be a string without NUL characters")
    if len(environment) > ENVIRONMENT_MAX_LENGTH:
        raise InvalidEnvironmentError(
            f"ENVIRONMENT has {len(environment)} characters; the outbox holds "
            f"{ENVIRONMENT_MAX_LENGTH}"
        )
    return environment


def _check_columns(cls: type[Event]) -> None:
    event_type, version = cls.event_type, cls.metadata_version
    if (
        not isinstance(event_type, str)
        or not 0 < len(event_type) <= EVENT_TYPE_MAX_LENGTH
        or "\x00" in event_type
    ):
        raise InvalidEventError(
            f"{cls.__name__[:60]}.event_type must be 1 to {EVENT_TYPE_MAX_LENGTH} characters "
            "without NUL"
        )
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not 1 <= version <= METADATA_VERSION_MAX
    ):
        raise InvalidEventError(
            f"{cls.__name__[:60]}.metadata_version must be an int from 1 to {METADATA_VERSION_MAX}"
        )


def _subject(event: Event) -> tuple[str, str]:
    kind, subject_id = event.subject_key()
    if len(subject_id) > SUBJECT_ID_MAX_LENGTH or "\x00" in subject_id:
        raise InvalidEventError(
            f"{type(event).__name__[:60]}'s subject id must be at most "
            f"{SUBJECT_ID_MAX_LENGTH} characters without NUL"
        )
    return kind, subject_id


def _serialize(event: Event) -> str:
    try:
        return event_context_json(event)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise EventSerializationError(
            f"{type(event).__name__} cannot be serialized to JSON: {exc}"
        ) from exc
