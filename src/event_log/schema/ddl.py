"""The DDL files of ``clickhouse_migrations/``, in order, rendered for one table.

``{table}`` in a file is replaced by the table's qualified name. Every file must
leave a table that went through all earlier files in the current shape, and be
written so that it can run again on such a table (``IF NOT EXISTS``, ``MODIFY
SETTING``): a new table (a fresh install, the copy made by the legacy upgrade) is
created by running all of them in order.
"""

from __future__ import annotations

from pathlib import Path

from clickhouse_connect.driver.client import Client

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "clickhouse_migrations"


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def render(path: Path, *, database: str, table: str) -> str:
    return path.read_text().replace("{table}", f"`{database}`.`{table}`")


def create_table(ch: Client, *, database: str, table: str) -> None:
    """Create ``database.table`` in the current shape by running every file in order."""
    for path in migration_files():
        ch.command(render(path, database=database, table=table))
