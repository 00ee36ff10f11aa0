"""Retention: how long the event log keeps events and dead letters.

- ClickHouse: a table TTL, ``event_date_time + EVENT_LOG_RETENTION_DAYS days``
  (none for 0), kept equal to the setting and to the event types' own retention
  (``retention_days`` on an :class:`~event_log.events.Event` class, listed in the
  catalogue) by :func:`apply_retention`, which ``clickhouse_migrate`` runs every time.
  The business time decides, not the delivery time.

  With one retention for every type the TTL is one expression and expired parts are
  dropped whole (``ttl_only_drop_parts = 1``, migration 0003): a monthly part expires
  when its last row does. With per-type retentions the TTL is one rule per retention
  (``… WHERE event_type IN (…)``, and the table's for the other types) and rows are
  deleted one by one (``ttl_only_drop_parts = 0``): every part mixes types, so with
  whole-part drops the longest-kept type would keep its neighbours' rows as long as
  itself (measured in docs/data-protection.md). The cost: a TTL merge rewrites the
  parts holding expired rows, at most every ``merge_with_ttl_timeout`` (4 hours).
- Dead letters: :func:`purge_old_dead_letters`, run daily by Celery Beat, deletes
  those older than ``EVENT_LOG_DEAD_LETTER_RETENTION_DAYS`` (none for 0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import structlog
from clickhouse_connect.driver.client import Client

from event_log import clickhouse
from event_log.catalogue import retention_days_by_event_type
from event_log.conf import event_log_settings

logger = structlog.get_logger(__name__)

_TTL = re.compile(r"\bTTL\s+(.*?)(?:\s+SETTINGS\s|$)", re.DOTALL)
_DROP_PARTS = re.compile(r"\bttl_only_drop_parts\s*=\s*(\d+)")


def _expires(days: int) -> str:
    return f"toDateTime(event_date_time) + toIntervalDay({int(days)})"


def _quoted(event_types: list[str]) -> str:
    return ", ".join(clickhouse.quote(event_type) for event_type in event_types)


def per_type_retention(days: int, overrides: Mapping[str, int] | None) -> dict[str, int]:
    """The ``overrides`` ({event_type: days}, 0 for ever) that differ from ``days``."""
    return {t: d for t, d in sorted((overrides or {}).items()) if d != days}


def ttl_expression(days: int, overrides: Mapping[str, int] | None = None) -> str | None:
    """The TTL the table should have for ``days`` and the per-type ``overrides``
    ({event_type: days}, 0 for ever); None: keep everything for ever. Written as
    ClickHouse prints it (``DELETE`` is the default action and is not printed)."""
    differing = per_type_retention(days, overrides)
    if not differing:
        return None if days == 0 else _expires(days)
    by_days: dict[int, list[str]] = {}
    for event_type, type_days in differing.items():
        by_days.setdefault(type_days, []).append(event_type)
    rules = [
        f"{_expires(type_days)} WHERE event_type IN ({_quoted(types)})"
        for type_days, types in sorted(by_days.items())
        if type_days
    ]
    if days:
        rules.append(f"{_expires(days)} WHERE event_type NOT IN ({_quoted(list(differing))})")
    return ", ".join(rules) or None


def current_ttl(ch: Client, *, database: str, table: str) -> str | None:
    """The table's TTL expression as ClickHouse prints it, or None."""
    engine = _engine_full(ch, database=database, table=table)
    return None if engine is None else ttl_of(engine)


def _engine_full(ch: Client, *, database: str, table: str) -> str | None:
    rows = ch.query(
        "SELECT engine_full FROM system.tables WHERE database = %(database)s AND name = %(table)s",
        parameters={"database": database, "table": table},
    ).result_rows
    return rows[0][0] if rows else None


def ttl_of(engine_full: str) -> str | None:
    """The TTL expression in a table's ``engine_full`` text, or None."""
    match = _TTL.search(engine_full)
    return match.group(1).strip() if match else None


def drops_whole_parts(engine_full: str) -> bool:
    """Whether the table's ``ttl_only_drop_parts`` is on (ClickHouse's default: off)."""
    match = _DROP_PARTS.search(engine_full)
    return bool(match and int(match.group(1)))


def _same(current: str | None, wanted: str | None) -> bool:
    def normal(text: str | None) -> str | None:
        if text is None:
            return None
        return re.sub(r"\s+", "", re.sub(r"\bDELETE\s+WHERE\b", "WHERE", text))

    return normal(current) == normal(wanted)


def apply_retention(
    ch: Client,
    *,
    database: str,
    table: str,
    days: int | None = None,
    overrides: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Make the table's TTL follow ``days`` (default: ``EVENT_LOG_RETENTION_DAYS``) and
    the per-type ``overrides`` (default: the catalogue's ``retention_days``), and its
    ``ttl_only_drop_parts`` fit them (on for one retention, off for per-type rules);
    returns what it changed ({"ttl_only_drop_parts": "1", "ttl": ...}; empty when the
    table already was so). Idempotent."""
    if days is None:
        days = event_log_settings().RETENTION_DAYS
    if overrides is None:
        overrides = retention_days_by_event_type()
    wanted = ttl_expression(days, overrides)
    drop_parts = not per_type_retention(days, overrides)
    engine = _engine_full(ch, database=database, table=table) or ""
    changed: dict[str, str] = {}
    if drops_whole_parts(engine) != drop_parts:
        ch.command(
            f"ALTER TABLE `{database}`.`{table}` "
            f"MODIFY SETTING ttl_only_drop_parts = {int(drop_parts)}"
        )
        changed["ttl_only_drop_parts"] = str(int(drop_parts))
    if not _same(ttl_of(engine), wanted):
        if wanted is None:
            ch.command(f"ALTER TABLE `{database}`.`{table}` REMOVE TTL")
        else:
            ch.command(f"ALTER TABLE `{database}`.`{table}` MODIFY TTL {wanted}")
        changed["ttl"] = wanted or "none"
    if changed:
        logger.info(
            "clickhouse_retention_set",
            database=database,
            table=table,
            retention_days=days,
            event_type_retention_days=per_type_retention(days, overrides),
            ttl_only_drop_parts=int(drop_parts),
        )
    return changed


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
