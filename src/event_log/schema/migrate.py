"""Versioned DDL files applied in order, once each.

Each file in ``clickhouse_migrations/`` is applied once; applied versions are
recorded in ``schema_migrations`` inside the target database. ``{table}`` in a
file is replaced by the configured event table.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import structlog
from clickhouse_connect.driver.client import Client

from event_log import clickhouse
from event_log.conf import event_log_settings

logger = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "clickhouse_migrations"
LEDGER = "schema_migrations"


UNKNOWN_DATABASE = 81


def migrate(url: str) -> list[str]:
    """Apply pending DDL to the ClickHouse at ``url``, creating its database first if needed."""
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


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def apply_migrations(ch: Client, *, table: str | None = None) -> list[str]:
    """Create the database if needed and apply pending DDL; returns the applied versions."""
    table = table or event_log_settings().CLICKHOUSE_TABLE
    database = ch.database or "default"
    # The client may have been created for a database that does not exist yet.
    ch.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    ch.command(
        f"CREATE TABLE IF NOT EXISTS `{database}`.{LEDGER} "
        "(version String, applied_at DateTime64(6, 'UTC') DEFAULT now64(6)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {
        row[0]
        for row in ch.query(
            f"SELECT version FROM `{database}`.{LEDGER} FINAL"  # noqa: S608 (identifiers only)
        ).result_rows
    }
    applied = []
    for path in migration_files():
        version = path.stem
        if version in done:
            continue
        ddl = path.read_text().replace("{table}", f"`{database}`.`{table}`")
        ch.command(ddl)
        ch.command(
            f"INSERT INTO `{database}`.{LEDGER} (version) VALUES (%(version)s)",  # noqa: S608
            parameters={"version": version},
        )
        logger.info("clickhouse_migration_applied", version=version, database=database)
        applied.append(version)
    return applied
