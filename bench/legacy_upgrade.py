"""The cost of converting the previous service's event table: ``python bench/legacy_upgrade.py``.

Fills a fresh embedded ClickHouse (or, with ``--url``, a database of a server)
with a table of the previous service's shape — ``--rows`` rows spread over
``--months`` months, contexts like a ``UserCreated`` event's — then runs what
``clickhouse_migrate`` runs on it and prints rows per second. Not part of
``make bench``: a million rows take a minute or so.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

LEGACY_DDL = """CREATE TABLE {table} (event_type String, event_date_time DateTime64(6),
    environment String, event_context String, metadata_version Int32 DEFAULT 1)
    ENGINE = MergeTree PARTITION BY toYYYYMM(event_date_time)
    ORDER BY (event_date_time, event_type)"""
FILL = """INSERT INTO {table}
SELECT ['user_created', 'user_deleted', 'user_logged_in'][number % 3 + 1],
       toDateTime64('2023-01-01 00:00:00', 6) + toIntervalMicrosecond(number * {step}),
       'production',
       concat('{{"user_id":', toString(number), ',"email":"user', toString(number),
              '@example.com","first_name":"Ada","last_name":"Lovelace"}}'),
       1
FROM numbers({rows})"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--url", help="a ClickHouse server URL (default: a fresh embedded engine)")
    args = parser.parse_args()

    from event_log import clickhouse, schema  # noqa: PLC0415

    folder = None if args.url else Path(tempfile.mkdtemp(prefix="legacy-upgrade-"))
    url = args.url or f"chdb://{folder}"
    table = "event_log_legacy_bench"
    step = int(args.months * 30.4 * 86_400 * 1_000_000 / args.rows)
    try:
        with clickhouse.client(url) as ch:
            database = ch.database or "default"
            ch.command(f"DROP TABLE IF EXISTS {table}")
            ch.command(LEGACY_DDL.format(table=table))
            ch.command(FILL.format(table=table, rows=args.rows, step=step))
            ch.command(f"OPTIMIZE TABLE {table} FINAL")
            started = time.perf_counter()
            report = schema.apply_migrations(ch, table=table, database=database)
            seconds = time.perf_counter() - started
            assert report.upgraded is not None
            print(
                f"{report.upgraded.rows:,} rows in {report.upgraded.months} months converted in "
                f"{seconds:.1f} s: {report.upgraded.rows / seconds:,.0f} rows/s "
                f"(ClickHouse {ch.command('SELECT version()')})"
            )
            for name in (table, report.upgraded.legacy_table):
                ch.command(f"DROP TABLE IF EXISTS {name}")
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
