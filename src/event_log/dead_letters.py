"""Dead letters: events ClickHouse rejected for their data. Listed, replayed, purged.

Replaying moves a dead letter back into the outbox with its original
``event_id`` and ``event_date_time``: it was never stored in ClickHouse, so
delivering it now keeps exactly-once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import structlog
from django.db import connection, transaction
from django.db.models import QuerySet

from event_log import sql
from event_log.kick import relay_run_on_commit
from event_log.models import DeadLetter

logger = structlog.get_logger(__name__)


def dead_letters_list(*, limit: int | None = None) -> QuerySet[DeadLetter]:
    queryset = DeadLetter.objects.order_by("id")
    return queryset[:limit] if limit else queryset


def dead_letters_replay(*, ids: Sequence[int] | None = None) -> int:
    """Move dead letters (all when ``ids`` is None) back to the outbox; returns how many."""
    with transaction.atomic():
        selected = list(
            DeadLetter.objects.select_for_update()
            .filter(**({} if ids is None else {"id__in": list(ids)}))
            .values_list("id", flat=True)
        )
        if not selected:
            return 0
        with connection.cursor() as cur:
            cur.execute(sql.REPLAY_DEAD_LETTERS, {"ids": selected})
            moved = cur.rowcount
        relay_run_on_commit(connection.alias)
    logger.info("dead_letters_replayed", dead_letters=moved)
    return moved


def dead_letters_purge(
    *, ids: Sequence[int] | None = None, older_than: datetime | None = None
) -> int:
    """Delete dead letters for good (by id, by age, or all); returns how many."""
    queryset = DeadLetter.objects.all()
    if ids is not None:
        queryset = queryset.filter(id__in=list(ids))
    if older_than is not None:
        queryset = queryset.filter(dead_lettered_at__lt=older_than)
    deleted, _ = queryset.delete()
    logger.info("dead_letters_purged", dead_letters=deleted)
    return deleted
