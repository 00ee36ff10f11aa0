"""The DDL files of ``clickhouse_migrations/``, in order, rendered for one table.

``{table}`` in a file is replaced by the table's qualified name, ``{batches}`` by that
of the chain's copy beside it (event_log.chain); statements are separated by a ``;``
at the end of a line. Every file must
leave a table that went through all earlier files in the current shape, and be
written so that it can run again on such a table (``IF NOT EXISTS``, ``MODIFY
SETTING``): a new table (a fresh install, the copy made by the legacy upgrade) is
created by running all of them in order.
"""

from __future__ import annotations

import re
from pathlib import Path

from clickhouse_connect.driver.client import Client

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "clickhouse_migrations"


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


_END_OF_STATEMENT = re.compile(r";[ \t]*$", re.MULTILINE)


def render(path: Path, *, database: str, table: str, batches: str | None = None) -> list[str]:
    """The file's statements for ``database.table`` (``batches``: the chain's copy,
    ``<table>_batches`` by default)."""
    text = (
        path.read_text()
        .replace("{table}", f"`{database}`.`{table}`")
        .replace("{batches}", f"`{database}`.`{batches or chain_copy_table(table)}`")
    )
    return [part.strip() for part in _END_OF_STATEMENT.split(text) if part.strip()]


def chain_copy_table(table: str) -> str:
    return f"{table}_batches"


def create_table(ch: Client, *, database: str, table: str, batches: str | None = None) -> None:
    """Create ``database.table`` in the current shape by running every file in order."""
    for path in migration_files():
        for statement in render(path, database=database, table=table, batches=batches):
            ch.command(statement)
