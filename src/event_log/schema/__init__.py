"""The event log's ClickHouse table: created and kept fit for exactly-once delivery.

- ``migrate``: versioned DDL files from ``clickhouse_migrations/``, applied once each
  (``manage.py clickhouse_migrate``).
"""

from event_log.schema.migrate import (
    LEDGER,
    MIGRATIONS_DIR,
    apply_migrations,
    migrate,
    migration_files,
)

__all__ = ["LEDGER", "MIGRATIONS_DIR", "apply_migrations", "migrate", "migration_files"]
