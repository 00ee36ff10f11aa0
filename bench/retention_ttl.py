"""Per-type retention and ``ttl_only_drop_parts``: what background TTL merges remove.

Run alone (``.venv/bin/python bench/retention_ttl.py [rows]``); it makes a fresh
embedded engine in a temporary folder and the event table twice from the project's
DDL files, with the same per-type TTL (``user_created`` 30 days, every other type
90 days): once as ``clickhouse_migrate`` leaves it (``ttl_only_drop_parts = 0``) and
once with whole-part drops forced back on. Each gets ``rows`` events of two types,
45 and 120 days old, types mixed in every part as the relay's batches mix them, and
background TTL merges allowed every second. It prints, for each table, the rows of
each (type, age) left once the first table's merges settle (or after a minute), and
how long that took.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import clickhouse_connect
import django

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
django.setup()

from event_log import retention, schema  # noqa: E402 — needs the settings above

OVERRIDES = {"user_created": 30}
SETTLE_S = 60.0


def main(rows: int) -> None:
    folder = tempfile.mkdtemp(prefix="retention-bench-")
    ch = clickhouse_connect.get_client(dsn=f"chdb://{folder}")
    tables = {"rows_one_by_one": False, "whole_parts_only": True}
    for database, drop_whole_parts in tables.items():
        schema.apply_migrations(ch, database=database)
        retention.apply_retention(
            ch, database=database, table="event_log", days=90, overrides=OVERRIDES
        )
        if drop_whole_parts:
            ch.command(f"ALTER TABLE {database}.event_log MODIFY SETTING ttl_only_drop_parts = 1")
        ch.command(f"ALTER TABLE {database}.event_log MODIFY SETTING merge_with_ttl_timeout = 1")
        # One INSERT per age, each a part per month holding both types.
        for days in (45, 120):
            ch.command(
                f"INSERT INTO {database}.event_log SELECT generateUUIDv4(), "
                "if(number % 2 = 0, 'user_created', 'ping'), "
                f"now64(6, 'UTC') - toIntervalDay({days}) + toIntervalSecond(number % 3600), "
                f"'bench', '{{}}', 1 FROM numbers({rows})"
            )
    started = time.perf_counter()
    left: dict[str, list[tuple[str, int, int]]] = {}
    while time.perf_counter() - started < SETTLE_S:
        time.sleep(1.0)
        for database in tables:
            left[database] = ch.query(
                "SELECT event_type, dateDiff('day', event_date_time, now64(6, 'UTC')) >= 100, "
                f"count() FROM {database}.event_log GROUP BY ALL ORDER BY ALL"
            ).result_rows
        if [row[:2] for row in left["rows_one_by_one"]] == [("ping", 0)]:
            break  # settled: only the rows within their retention are left
    print(f"{rows} rows per age, after {time.perf_counter() - started:.0f} s of TTL merges:")
    for database, rows_left in left.items():
        described = ", ".join(
            f"{event_type} {'120' if old else '45'} days: {count}"
            for event_type, old, count in rows_left
        )
        print(f"  {database}: {described or 'nothing'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
