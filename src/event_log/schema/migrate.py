"""``clickhouse_migrate``: bring the event table to the current schema, or say why not.

In order: convert the previous service's table if that is what holds the name
(``legacy``), apply each pending DDL file once (applied versions are recorded in
``schema_migrations`` inside the target database), then check the table really is
fit for the event log and repair its settings (``verify``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import structlog
from clickhouse_connect.driver.client import Client

from event_log import clickhouse, retention
from event_log.conf import event_log_settings
from event_log.schema import ddl, legacy, verify

logger = structlog.get_logger(__name__)

LEDGER = "schema_migrations"
UNKNOWN_DATABASE = 81


@dataclass(slots=True)
class MigrationReport:
    """What a migration did: files applied, legacy table converted, settings repaired."""

    applied: list[str] = field(default_factory=list)
    upgraded: legacy.LegacyUpgrade | None = None
    repaired: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.upgraded or self.repaired)


def migrate(url: str) -> MigrationReport:
    """Migrate the ClickHouse at ``url``, creating its database first if needed.

    Raises :class:`verify.TableNotReadyError` or :class:`legacy.LegacyUpgradeError`
    when the table cannot be made fit (nothing changed), ClickHouseError otherwise.
    """
    try:
        ch = clickhouse.connect(url)
    except clickhouse.ClickHouseError as exc:
        database = urlsplit(url).path.strip("/")
        if exc.code != UNKNOWN_DATABASE or not database:
            raise
        # A server refuses a session in a database that does not exist yet.
        with clickhouse.client(urlunsplit(urlsplit(url)._replace(path="/"))) as admin:
            admin.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        ch = clickhouse.connect(url)
    try:
        return apply_migrations(ch)
    finally:
        ch.close()


def apply_migrations(
    ch: Client, *, table: str | None = None, database: str | None = None
) -> MigrationReport:
    """Create the database if needed, convert a legacy table, apply pending DDL, verify."""
    table = table or event_log_settings().CLICKHOUSE_TABLE
    database = database or ch.database or "default"
    report = MigrationReport()
    # The client may have been created for a database that does not exist yet.
    ch.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    ch.command(
        f"CREATE TABLE IF NOT EXISTS `{database}`.{LEDGER} "
        "(version String, applied_at DateTime64(6, 'UTC') DEFAULT now64(6)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    report.upgraded = legacy.upgrade_legacy_table(ch, database=database, table=table)
    done = {
        row[0]
        for row in ch.query(
            f"SELECT version FROM `{database}`.{LEDGER} FINAL"  # noqa: S608 (identifiers only)
        ).result_rows
    }
    # A table missing while the ledger says its files ran (dropped by hand, or
    # another EVENT_LOG_CLICKHOUSE_TABLE) gets them all, in order.
    exists = verify.inspect_table(ch, database=database, table=table).engine is not None
    for path in ddl.migration_files():
        version = path.stem
        if version in done and exists:
            continue
        for statement in ddl.render(path, database=database, table=table):
            ch.command(statement)
        if version in done:
            continue
        ch.command(
            f"INSERT INTO `{database}`.{LEDGER} (version) VALUES (%(version)s)",  # noqa: S608
            parameters={"version": version},
        )
        logger.info("clickhouse_migration_applied", version=version, database=database)
        report.applied.append(version)
    report.repaired = verify.verify_table(ch, database=database, table=table)
    report.repaired.update(retention.apply_retention(ch, database=database, table=table))
    return report
