"""Dead letters: events ClickHouse rejected for their data. Listed, replayed, purged.

Replaying moves a dead letter back into the outbox with its original
``event_id`` and ``event_date_time``: it was never stored in ClickHouse, so
delivering it now keeps exactly-once.

Timestamps are read as text (:class:`TimestampText`): a dead letter may be dated
where Python's ``datetime`` cannot follow (``infinity``, after year 9999; loading
such a value raises), and those are the very events ClickHouse refused.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from django.db import connection, transaction
from django.db.models import Func, Model, QuerySet, TextField

from event_log import chain, sql
from event_log.kick import relay_run_on_commit
from event_log.models import DeadLetter

logger = structlog.get_logger(__name__)


class TimestampText(Func):
    """A timestamp as ISO 8601 text (``2026-11-30T04:15:19.123456+00:00``), or
    ``infinity`` / ``-infinity``; any year PostgreSQL holds. Django's connections are
    in UTC, so the offset is +00:00."""

    template = "(to_json(%(expressions)s) #>> '{}')"
    output_field = TextField()


def with_timestamps_as_text[M: Model](
    queryset: QuerySet[M], fields: Sequence[str] = ("event_date_time", "dead_lettered_at")
) -> QuerySet[M]:
    """``queryset`` with the timestamp ``fields`` deferred (never loaded as datetimes)
    and annotated as text, each as ``<field>_text``."""
    return queryset.defer(*fields).annotate(
        **{f"{field}_text": TimestampText(field) for field in fields}
    )


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A dead letter as listed; timestamps as text (see :class:`TimestampText`)."""

    id: int
    event_id: uuid.UUID
    event_type: str
    event_date_time: str
    error_code: int | None
    error: str
    attempts: int
    dead_lettered_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "event_date_time": self.event_date_time,
            "error_code": self.error_code,
            "error": self.error,
            "attempts": self.attempts,
            "dead_lettered_at": self.dead_lettered_at,
        }


def dead_letters_list(
    *,
    limit: int | None = None,
    ids: Sequence[int] | None = None,
    older_than: datetime | None = None,
) -> list[DeadLetterRow]:
    """Dead letters in id order (those ``ids``, dead-lettered before ``older_than``),
    at most ``limit``; every one of them, whatever its dates."""
    queryset = _selected(ids=ids, older_than=older_than).order_by("id")
    rows = queryset.values_list(
        "id",
        "event_id",
        "event_type",
        TimestampText("event_date_time"),
        "error_code",
        "error",
        "attempts",
        TimestampText("dead_lettered_at"),
    )
    return [DeadLetterRow(*row) for row in (rows[:limit] if limit else rows)]


def dead_letters_count(
    *, ids: Sequence[int] | None = None, older_than: datetime | None = None
) -> int:
    return _selected(ids=ids, older_than=older_than).count()


def cutoff_for_age(days: float) -> datetime:
    """The time ``days`` ago; ValueError unless ``days`` is a finite number >= 0 that
    does not reach before year 1."""
    if not math.isfinite(days) or days < 0:
        raise ValueError(f"an age must be a number of days >= 0, not {days}")
    try:
        return datetime.now(UTC) - timedelta(days=days)
    except OverflowError:
        raise ValueError(f"{days} days ago is before year 1") from None


def dead_letters_replay(*, ids: Sequence[int] | None = None) -> int:
    """Move dead letters (all when ``ids`` is None) back to the outbox; returns how many."""
    with transaction.atomic():
        rows = list(
            DeadLetter.objects.select_for_update()
            .filter(**({} if ids is None else {"id__in": list(ids)}))
            .values_list("id", "event_id")
        )
        if not rows:
            return 0
        selected = [row_id for row_id, _ in rows]
        with connection.cursor() as cur:
            cur.execute(sql.REPLAY_DEAD_LETTERS, {"ids": selected})
            moved = cur.rowcount
            # The replay in the batch chain: which events went back (their rows are
            # chained again when delivered, so no row digest here).
            chain.append(
                cur,
                chain.pending_pairs(
                    chain.REPLAY, ((event_id, chain.NO_DIGEST) for _, event_id in rows)
                ),
            )
        relay_run_on_commit(connection.alias)
    # Ids only: which events went back is audit; their contexts stay out of logs.
    logger.info(
        "dead_letters_replayed",
        dead_letters=moved,
        event_ids=[str(event_id) for _, event_id in rows[:100]],
    )
    return moved


def dead_letters_purge(
    *, ids: Sequence[int] | None = None, older_than: datetime | None = None
) -> int:
    """Delete dead letters for good (by id, by age, or all); returns how many."""
    deleted, _ = _selected(ids=ids, older_than=older_than).delete()
    logger.info("dead_letters_purged", dead_letters=deleted)
    return deleted


def _selected(
    *, ids: Sequence[int] | None = None, older_than: datetime | None = None
) -> QuerySet[DeadLetter]:
    queryset = DeadLetter.objects.all()
    if ids is not None:
        queryset = queryset.filter(id__in=list(ids))
    if older_than is not None:
        queryset = queryset.filter(dead_lettered_at__lt=older_than)
    return queryset
