"""Convert the previous service's event table to the current schema, keeping every row.

The service this one replaces created ``event_log`` without ``event_id``, with
``DateTime64(6)`` in the server's time zone and ``metadata_version Int32``
(:func:`verify.is_legacy_shape`). ``CREATE TABLE IF NOT EXISTS`` keeps such a
table, and every insert of the relay then fails. The conversion is a copy and a
swap, safe to interrupt at any point and to run again:

1. one scan of the old table: rows and a digest per month (UTC), and the rows the
   new table would refuse (a negative ``metadata_version``, an ``event_context``
   that is not JSON); any of those and nothing is written;
2. ``<table>_upgrade`` is created with the current DDL (every migration file) and
   marked as the copy by its comment (a table of that name without the mark is
   refused, never dropped from);
3. month by month, ``INSERT … SELECT`` with a new random ``event_id`` per row.
   A month of the copy whose rows and digest already match the old table's is
   kept; any other is dropped and copied again, so a copy cut short by a crash is
   finished, not doubled, by the next run. Each copied month is checked the same way;
4. the totals are compared once more (rows written to the old table meanwhile
   would be missed: the old service's writers must be stopped first);
5. ``EXCHANGE TABLES`` swaps the two names atomically, then the old table is
   renamed ``<table>_legacy_<UTC timestamp>``, for the operator to drop.

A run that died between 5's two statements is finished by the next one. The
digest is ``sum(cityHash64(row))`` over the five old columns: equal multisets of
rows give equal digests, whatever the order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from clickhouse_connect.driver.client import Client

from event_log.clickhouse import ClickHouseError
from event_log.schema import ddl, verify

logger = structlog.get_logger(__name__)

STAGING_SUFFIX = "_upgrade"
LEGACY_INFIX = "_legacy_"
VIOLATED_CONSTRAINT = 469
# Marks the copy as ours: a resumed run drops months of it, so it must never
# mistake someone else's table for it.
STAGING_COMMENT = "event log conversion in progress; do not use"

# The same expression on both tables: types are brought to the old ones' first.
_DIGEST = (
    "sum(cityHash64(CAST(event_type AS String), toUnixTimestamp64Micro(event_date_time), "
    "CAST(environment AS String), event_context, toInt64(metadata_version)))"
)
COPY_MONTH = """
INSERT INTO {staging}
    (event_id, event_type, event_date_time, environment, event_context, metadata_version)
SELECT generateUUIDv4(), event_type, toTimeZone(event_date_time, 'UTC'), environment,
       event_context, toUInt64(metadata_version)
FROM {legacy}
WHERE toYYYYMM(event_date_time, 'UTC') = {month}
SETTINGS insert_deduplicate = 0
"""


class LegacyUpgradeError(ClickHouseError):
    """The previous service's table could not be converted; it is left as it was."""


@dataclass(frozen=True, slots=True)
class LegacyUpgrade:
    """A finished conversion: ``legacy_table`` holds the old rows, untouched."""

    table: str
    legacy_table: str
    rows: int
    months: int
    months_copied: int
    seconds: float


def upgrade_legacy_table(ch: Client, *, database: str, table: str) -> LegacyUpgrade | None:
    """Convert ``database.table`` if it has the previous service's shape; None otherwise.

    Raises :class:`LegacyUpgradeError` when a row cannot be carried over or the
    copy does not match (the old table keeps its name and rows), ClickHouseError
    when ClickHouse fails (run it again: it resumes).
    """
    try:
        return _upgrade(ch, database=database, table=table)
    except ClickHouseError:
        raise
    except Exception as exc:
        raise ClickHouseError.from_exception(exc) from exc


def _upgrade(ch: Client, *, database: str, table: str) -> LegacyUpgrade | None:
    started = time.monotonic()
    staging = f"{table}{STAGING_SUFFIX}"
    columns = _column_types(ch, database, table)
    if not verify.is_legacy_shape(columns):
        if columns and verify.is_legacy_shape(_column_types(ch, database, staging)):
            # An earlier run swapped the names and died before the rename.
            return _set_aside(ch, database=database, table=table, months=0, started=started)
        return None

    source = f"`{database}`.`{table}`"
    target = f"`{database}`.`{staging}`"
    months = _month_stats(ch, source, extra=True)
    _refuse_rows_that_cannot_move(source, months)
    staging_columns = _column_types(ch, database, staging)
    if staging_columns and _comment(ch, database, staging) != STAGING_COMMENT:
        raise LegacyUpgradeError(
            f"ClickHouse table {target} exists and is not a copy in progress: rename or drop "
            f"it, then run `manage.py clickhouse_migrate` again to convert {source}."
        )
    if not staging_columns:
        # The copy gets the current columns (batch_id: nil, the rows predate the chain);
        # the chain's own table is the real table's, not the copy's.
        ddl.create_table(ch, database=database, table=staging, batches=ddl.chain_copy_table(table))
        ch.command(f"ALTER TABLE {target} MODIFY COMMENT '{STAGING_COMMENT}'")
    verify.verify_table(ch, database=database, table=staging)
    total = sum(stats[0] for stats in months.values())
    logger.info("clickhouse_legacy_upgrade_started", table=source, rows=total, months=len(months))

    copied = 0
    copies = _month_stats(ch, target)
    for month in sorted(set(copies) - set(months)):
        ch.command(f"ALTER TABLE {target} DROP PARTITION ID '{month}'")
    for month, (rows, digest, *_) in sorted(months.items()):
        if copies.get(month) == (rows, digest):
            continue
        month_started = time.monotonic()
        if month in copies:
            ch.command(f"ALTER TABLE {target} DROP PARTITION ID '{month}'")
        _copy_month(ch, source=source, target=target, month=month)
        copy = _month_stats(ch, target, month=month).get(month, (0, 0))
        if copy != (rows, digest):
            raise LegacyUpgradeError(
                f"The copy of month {month} of {source} into {target} does not match "
                f"({copy[0]:,} rows for {rows:,}, or different content); {source} is "
                "untouched. Run `manage.py clickhouse_migrate` again: it copies that month anew."
            )
        copied += 1
        logger.info(
            "clickhouse_legacy_month_copied",
            table=source,
            month=month,
            rows=rows,
            duration_ms=round((time.monotonic() - month_started) * 1000),
        )

    now_rows = _count(ch, source)
    if now_rows != total:
        raise LegacyUpgradeError(
            f"{source} changed while it was copied ({total:,} rows, now {now_rows:,}): stop "
            "whatever still writes to it, then run `manage.py clickhouse_migrate` again "
            "(it copies only the months that changed)."
        )
    ch.command(f"EXCHANGE TABLES {source} AND {target}")
    return _set_aside(
        ch, database=database, table=table, months=len(months), copied=copied, started=started
    )


def _set_aside(
    ch: Client, *, database: str, table: str, months: int, started: float, copied: int = 0
) -> LegacyUpgrade:
    """Rename the old table (now under the staging name) out of the way."""
    legacy = f"{table}{LEGACY_INFIX}{datetime.now(UTC):%Y%m%d%H%M%S}"
    ch.command(f"RENAME TABLE `{database}`.`{table}{STAGING_SUFFIX}` TO `{database}`.`{legacy}`")
    ch.command(f"ALTER TABLE `{database}`.`{table}` MODIFY COMMENT ''")
    done = LegacyUpgrade(
        table=f"`{database}`.`{table}`",
        legacy_table=f"`{database}`.`{legacy}`",
        rows=_count(ch, f"`{database}`.`{table}`"),
        months=months,
        months_copied=copied,
        seconds=time.monotonic() - started,
    )
    logger.info(
        "clickhouse_legacy_table_upgraded",
        table=done.table,
        legacy_table=done.legacy_table,
        rows=done.rows,
        months=done.months,
        duration_ms=round(done.seconds * 1000),
    )
    return done


def _refuse_rows_that_cannot_move(source: str, months: dict[int, tuple[int, ...]]) -> None:
    negative = sum(stats[2] for stats in months.values())
    not_json = sum(stats[3] for stats in months.values())
    problems = []
    if negative:
        problems.append(
            f"{negative:,} rows have a negative metadata_version "
            "(the new column is UInt64): SELECT … WHERE metadata_version < 0"
        )
    if not_json:
        problems.append(
            f"{not_json:,} rows have an event_context that is not JSON (the new table "
            "refuses them): SELECT … WHERE NOT isValidJSON(event_context)"
        )
    if problems:
        raise LegacyUpgradeError(
            f"{source} cannot be converted, nothing was changed: {'; '.join(problems)}. "
            "Fix or move those rows, then run `manage.py clickhouse_migrate` again."
        )


def _copy_month(ch: Client, *, source: str, target: str, month: int) -> None:
    try:
        ch.command(COPY_MONTH.format(staging=target, legacy=source, month=int(month)))
    except Exception as exc:
        error = ClickHouseError.from_exception(exc)
        if error.code == VIOLATED_CONSTRAINT:
            raise LegacyUpgradeError(
                f"Month {month} of {source} holds rows {target} refuses: {error}", code=error.code
            ) from exc
        raise error from exc


def _month_stats(
    ch: Client, table: str, *, month: int | None = None, extra: bool = False
) -> dict[int, tuple[int, ...]]:
    """month (UTC) -> (rows, digest[, negative metadata_version, context not JSON])."""
    checks = (
        ", countIf(metadata_version < 0), countIf(NOT isValidJSON(event_context))" if extra else ""
    )
    where = f"WHERE toYYYYMM(event_date_time, 'UTC') = {int(month)}" if month else ""
    rows = ch.query(
        f"SELECT toYYYYMM(event_date_time, 'UTC') AS month, count(), {_DIGEST}{checks} "  # noqa: S608
        f"FROM {table} {where} GROUP BY month"
    ).result_rows
    return {int(row[0]): tuple(int(v) for v in row[1:]) for row in rows}


def _count(ch: Client, table: str) -> int:
    rows = ch.query(f"SELECT count() FROM {table}").result_rows  # noqa: S608 (identifiers only)
    return int(rows[0][0])


def _comment(ch: Client, database: str, table: str) -> str:
    rows = ch.query(
        "SELECT comment FROM system.tables WHERE database = %(db)s AND name = %(t)s",
        parameters={"db": database, "t": table},
    ).result_rows
    return str(rows[0][0]) if rows else ""


def _column_types(ch: Client, database: str, table: str) -> dict[str, str]:
    return {
        str(name): str(kind)
        for name, kind in ch.query(
            "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(t)s",
            parameters={"db": database, "t": table},
        ).result_rows
    }
