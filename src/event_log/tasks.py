"""Celery tasks: thin adapters around the relay."""

from __future__ import annotations

import structlog
from celery import shared_task

from event_log.kick import kick_started
from event_log.relay import Relay
from event_log.retention import purge_old_dead_letters as purge_old

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


@shared_task(name="event_log.tasks.purge_old_dead_letters", ignore_result=True)
def purge_old_dead_letters() -> int:
    """Delete dead letters older than EVENT_LOG_DEAD_LETTER_RETENTION_DAYS (daily)."""
    return purge_old()
