"""Celery tasks: thin adapters around the relay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from celery import shared_task

from event_log import erasure
from event_log.clickhouse import ClickHouseError
from event_log.kick import kick_started
from event_log.query import answer_query
from event_log.relay import Relay
from event_log.retention import purge_old_dead_letters as purge_old
from event_log.verify import purge_old_records, record_verification, verify_log

logger = structlog.get_logger(__name__)

# One relay per worker process keeps its ClickHouse client open between runs
# (the embedded engine takes a fraction of a second to open).
_relay: Relay | None = None


def _worker_relay() -> Relay:
    global _relay  # noqa: PLW0603
    if _relay is None:
        _relay = Relay()
    return _relay


@shared_task(name="event_log.tasks.relay_outbox", ignore_result=True)
def relay_outbox(*, kicked: bool = False) -> dict[str, int | bool]:
    """Drain the outbox for up to EVENT_LOG_TIME_BUDGET seconds."""
    kick_started()
    report = _worker_relay().run()
    return {
        "kicked": kicked,
        "batches": report.batches,
        "delivered": report.delivered,
        "dead_lettered": report.dead_lettered,
        "failures": report.failures,
        "drained": report.drained,
    }


@shared_task(name="event_log.tasks.verify_deliveries", ignore_result=True)
def verify_deliveries_task(*, window_seconds: float = 3600.0) -> dict[str, int | bool]:
    """Purge delivery records past their retention, then verify the last ``window_seconds``
    (delivery records and the batch chain).

    Logs the chain's head and ``event_log_verify_passed`` or ``event_log_verify_failed``;
    the outcome is kept in PostgreSQL for the ``event_log_verify_failures`` and
    ``event_log_verify_chain_breaks`` metrics.
    """
    purged = purge_old_records()
    report = verify_log(since=datetime.now(UTC) - timedelta(seconds=window_seconds))
    record_verification(report)
    return {
        "purged": purged,
        "events": report.events,
        "duplicated": len(report.duplicated),
        "missing": len(report.missing),
        "altered": len(report.altered),
        "extra": len(report.extra),
        "chain_breaks": len(report.chain.breaks) if report.chain else 0,
        "clean": report.clean,
    }


@shared_task(name="event_log.tasks.query_event_log", ignore_result=True)
def query_event_log(*, statement: str, limit: int, answer_key: str) -> None:
    """Answer a read-only query with this worker's ClickHouse client (ADR 0011).

    With the embedded engine the worker's relay holds the only client there can be;
    ``manage.py event_log_query`` and ``event_log_status`` send their query here and
    read the answer from the cache under ``answer_key``.
    """
    answer_query(
        _worker_relay().connect_clickhouse, statement=statement, limit=limit, key=answer_key
    )


@shared_task(name="event_log.tasks.purge_old_dead_letters", ignore_result=True)
def purge_old_dead_letters() -> int:
    """Delete dead letters older than EVENT_LOG_DEAD_LETTER_RETENTION_DAYS (daily)."""
    return purge_old()


@shared_task(
    name="event_log.tasks.erase_subject_in_clickhouse",
    ignore_result=True,
    autoretry_for=(ClickHouseError,),
    retry_backoff=True,
    max_retries=8,
)
def erase_subject_in_clickhouse(*, subject: str) -> int:
    """An erasure's follow-up pass, queued by ``event_log_erase`` to run once every
    INSERT in flight at the erasure has landed: rewrite what ClickHouse still holds of
    the subject's personal fields (idempotent; retried while ClickHouse fails). Uses
    this worker's ClickHouse client, the only one with the embedded engine (ADR 0011)."""
    return erasure.erase_subject_in_clickhouse(
        subject=subject, client=_worker_relay().connect_clickhouse()
    )
