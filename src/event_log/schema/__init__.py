"""The event log's ClickHouse table: created, converted and kept fit for exactly-once.

- ``migrate``: what ``manage.py clickhouse_migrate`` does, in order;
- ``ddl``: the versioned DDL files of ``clickhouse_migrations/``;
- ``legacy``: the conversion of the previous service's table, keeping every row;
- ``verify``: is the table fit (engine, deduplication window, fsync, columns)?
  ``ensure_table_ready`` is the relay's cheap check before it first inserts.
"""

from event_log.schema.ddl import MIGRATIONS_DIR, migration_files
from event_log.schema.legacy import LegacyUpgrade, LegacyUpgradeError, upgrade_legacy_table
from event_log.schema.migrate import LEDGER, MigrationReport, apply_migrations, migrate
from event_log.schema.verify import (
    DEDUP_WINDOW_MIN,
    TableNotReadyError,
    ensure_table_ready,
    verify_table,
)

__all__ = [
    "DEDUP_WINDOW_MIN",
    "LEDGER",
    "MIGRATIONS_DIR",
    "LegacyUpgrade",
    "LegacyUpgradeError",
    "MigrationReport",
    "TableNotReadyError",
    "apply_migrations",
    "ensure_table_ready",
    "migrate",
    "migration_files",
    "upgrade_legacy_table",
    "verify_table",
]
