"""Retention: how long the event log keeps events and dead letters.

- ClickHouse: a table TTL, ``event_date_time + EVENT_LOG_RETENTION_DAYS days``
  (none for 0), kept equal to the setting by :func:`apply_retention`, which
  ``clickhouse_migrate`` runs every time (the migration 0003 makes expired parts be
  dropped whole). The business time decides, not the delivery time.
- Dead letters: :func:`purge_old_dead_letters`, run daily by Celery Beat, deletes
  those older than ``EVENT_LOG_DEAD_LETTER_RETENTION_DAYS`` (none for 0).
"""

from __future__ import annotations

import re

import structlog
from clickhouse_connect.driver.client import Client

from event_log.conf import event_log_settings

logger = structlog.get_logger(__name__)

_TTL = re.compile(r"\bTTL\s+(.*?)(?:\s+SETTINGS\s|$)", re.DOTALL)


def ttl_expression(days: int) -> str | None:
    """The TTL the table should have for ``days`` (None: keep for ever)."""
    if days == 0:
        return None
    return f"toDateTime(event_date_time) + toIntervalDay({int(days)})"


def current_ttl(ch: Client, *, database: str, table: str) -> str | None:
    """The table's TTL expression as ClickHouse prints it, or None."""
    rows = ch.query(
        "SELECT engine_full FROM system.tables WHERE database = %(database)s AND name = %(table)s",
        parameters={"database": database, "table": table},
    ).result_rows
    if not rows:
        return None
    return ttl_of(rows[0][0])


def ttl_of(engine_full: str) -> str | None:
    """The TTL expression in a table's ``engine_full`` text, or None."""
    match = _TTL.search(engine_full)
    return match.group(1).strip() if match else None


def _same(current: str | None, wanted: str | None) -> bool:
    def normal(text: str | None) -> str | None:
        return None if text is None else re.sub(r"\s+", "", text)

    return normal(current) == normal(wanted)


def apply_retention(ch: Client, *, database: str, table: str, days: int | None = None) -> bool:
    """Make the table's TTL follow ``days`` (default: ``EVENT_LOG_RETENTION_DAYS``);
    returns True when it changed it. Idempotent."""
    days = event_log_settings().RETENTION_DAYS if days is None else days
    wanted = ttl_expression(days)
    current = current_ttl(ch, database=database, table=table)
    if _same(current, wanted):
        return False
    if wanted is None:
        ch.command(f"ALTER TABLE `{database}`.`{table}` REMOVE TTL")
    else:
        ch.command(f"ALTER TABLE `{database}`.`{table}` MODIFY TTL {wanted}")
    logger.info("clickhouse_retention_set", database=database, table=table, retention_days=days)
    return True


def purge_old_dead_letters(*, days: int | None = None) -> int:
    """Delete dead letters older than ``days`` (default:
    ``EVENT_LOG_DEAD_LETTER_RETENTION_DAYS``; 0 deletes none); returns how many."""
    # Imported here: event_log.status imports this module before the models are ready.
    from event_log.dead_letters import cutoff_for_age, dead_letters_purge  # noqa: PLC0415

    days = event_log_settings().DEAD_LETTER_RETENTION_DAYS if days is None else days
    if days == 0:
        return 0
    deleted = dead_letters_purge(older_than=cutoff_for_age(days))
    logger.info("dead_letters_expired", dead_letters=deleted, retention_days=days)
    return deleted
