"""Envelope lookups: "all events of subject X", "everything request R did", "what actor A
did in a month", on an event table of millions of rows.

The table is the project's (every DDL file of ``clickhouse_migrations/``, so with the
bloom-filter skip indexes of ``0004_envelope``), filled with ``rows`` events over twelve
months: ten per subject scattered over the year, two per request, actors drawn from
the subjects. Each lookup runs for ``lookups`` different keys with the skip indexes
(``use_skip_indexes = 1``, the default) and without (``= 0``), on the same parts; the
figures are the median time and the rows ClickHouse read (its own statistics). For
comparison, the subject lookup also runs on a copy of the table with a projection
ordered by ``(subject_type, subject_id, event_date_time)`` instead, the alternative
ADR 0014 weighs.

Section ``lookup`` of ``make bench``; alone: ``.venv/bin/python bench/envelope_lookup.py
[rows]`` (a fresh embedded engine in a temporary folder; default 5,000,000 rows).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

TABLE = "bench_envelope_lookup"
PROJECTED = "bench_envelope_lookup_projection"
EVENTS_PER_SUBJECT = 10

FILL = """
INSERT INTO {table} (event_id, event_type, event_date_time, environment, event_context,
    metadata_version, actor_type, actor_id, subject_type, subject_id, request_id, traceparent)
SELECT generateUUIDv4(number),
       ['user_created', 'user_logged_in', 'user_logged_in', 'user_updated', 'password_changed']
           [number % 5 + 1],
       toDateTime64('2025-01-01 00:00:00', 6, 'UTC')
           + toIntervalMicrosecond(number * {step_us}),
       'bench',
       concat('{{"user_id":', toString(cityHash64(number) % {subjects}),
              ',"email":"user', toString(number), '@example.com","first_name":"Ada"}}'),
       1,
       if(number % 10 < 8, 'user', 'api_client'),
       if(number % 10 < 8, toString(cityHash64(number, 1) % {subjects}), ''),
       'user',
       toString(cityHash64(number) % {subjects}),
       lower(concat(hex(cityHash64(intDiv(number, 2))), hex(cityHash64(intDiv(number, 2), 7)))),
       ''
FROM numbers({rows})
"""
YEAR_US = 365 * 24 * 3600 * 1_000_000

LOOKUPS = {
    "subject": (
        "SELECT event_id, event_type, event_date_time FROM {table} "
        "WHERE subject_type = 'user' AND subject_id = '{key}' ORDER BY event_date_time"
    ),
    "request": (
        "SELECT event_id, event_type, event_date_time FROM {table} "
        "WHERE request_id = '{key}' ORDER BY event_date_time"
    ),
    "actor_month": (
        "SELECT event_id, event_type, event_date_time FROM {table} "
        "WHERE actor_type = 'user' AND actor_id = '{key}' "
        "AND event_date_time >= '2025-06-01 00:00:00' AND event_date_time < '2025-07-01 00:00:00' "
        "ORDER BY event_date_time"
    ),
}


def run(ch: Any, *, rows: int, lookups: int = 5, projection: bool = True) -> dict[str, Any]:
    """Fill the tables in ``ch``'s database, time the lookups, drop the tables."""
    from event_log.schema import ddl  # noqa: PLC0415 (Django is set up by the caller first)

    database = ch.database or "default"
    table = f"`{database}`.`{TABLE}`"
    projected = f"`{database}`.`{PROJECTED}`"
    subjects = max(1, rows // EVENTS_PER_SUBJECT)
    for name in (TABLE, PROJECTED):
        ch.command(f"DROP TABLE IF EXISTS `{database}`.`{name}`")
    ddl.create_table(ch, database=database, table=TABLE)
    started = time.perf_counter()
    ch.command(
        FILL.format(table=table, rows=rows, subjects=subjects, step_us=YEAR_US // rows),
        settings={"max_partitions_per_insert_block": 0, "insert_deduplicate": 0},
    )
    fill_s = time.perf_counter() - started
    try:
        result: dict[str, Any] = {
            "rows": rows,
            "subjects": subjects,
            "fill_s": fill_s,
            "parts": int(
                ch.command(
                    "SELECT count() FROM system.parts WHERE database = currentDatabase() "
                    f"AND table = '{TABLE}' AND active"
                )
            ),
            "table_bytes": _bytes_on_disk(ch, TABLE),
            "index_bytes": int(
                ch.command(
                    "SELECT sum(data_compressed_bytes) FROM system.data_skipping_indices "
                    f"WHERE database = currentDatabase() AND table = '{TABLE}'"
                )
            ),
            "lookups": {},
        }
        keys = _keys(ch, table, lookups)
        for name, statement in LOOKUPS.items():
            result["lookups"][name] = {
                "indexed": _measure(ch, statement, table, keys[name], use_skip_indexes=1),
                "full_scan": _measure(ch, statement, table, keys[name], use_skip_indexes=0),
            }
            entry = result["lookups"][name]
            entry["rows_read_ratio"] = entry["full_scan"]["rows_read"] / max(
                1, entry["indexed"]["rows_read"]
            )
            entry["time_ratio"] = entry["full_scan"]["median_ms"] / entry["indexed"]["median_ms"]
            # The index may only skip granules without a match: both find the same rows.
            entry["same_rows"] = (
                entry["indexed"]["rows_found_total"] == entry["full_scan"]["rows_found_total"] > 0
            )
        if projection:
            result["projection"] = _projection(ch, table, projected, keys["subject"])
    finally:
        for name in (TABLE, PROJECTED):
            ch.command(f"DROP TABLE IF EXISTS `{database}`.`{name}`")
    return result


def _projection(ch: Any, table: str, projected: str, keys: list[str]) -> dict[str, Any]:
    """The subject lookup through a projection, on a copy without the skip indexes."""
    ch.command(f"CREATE TABLE {projected} AS {table}")
    for index in ("subject_lookup", "request_lookup", "actor_lookup"):
        ch.command(f"ALTER TABLE {projected} DROP INDEX IF EXISTS {index}")
    ch.command(
        f"ALTER TABLE {projected} ADD PROJECTION by_subject "
        "(SELECT * ORDER BY subject_type, subject_id, event_date_time)"
    )
    ch.command(
        f"INSERT INTO {projected} SELECT * FROM {table}",
        settings={"max_partitions_per_insert_block": 0, "insert_deduplicate": 0},
    )
    return {
        "table_bytes": _bytes_on_disk(ch, PROJECTED),
        "subject": _measure(ch, LOOKUPS["subject"], projected, keys, use_skip_indexes=1),
    }


def _keys(ch: Any, table: str, count: int) -> dict[str, list[str]]:
    """Keys that exist, spread over the table (every n-th of a sample)."""

    def sample(column: str, where: str = "") -> list[str]:
        rows = ch.query(
            f"SELECT {column} FROM {table} {where} ORDER BY cityHash64({column}) LIMIT {count}"
        ).result_rows
        return [str(row[0]) for row in rows]

    return {
        "subject": sample("subject_id"),
        "request": sample("request_id"),
        "actor_month": sample(
            "actor_id",
            "WHERE actor_type = 'user' AND event_date_time >= '2025-06-01 00:00:00' "
            "AND event_date_time < '2025-07-01 00:00:00'",
        ),
    }


def _measure(
    ch: Any, statement: str, table: str, keys: list[str], *, use_skip_indexes: int
) -> dict[str, Any]:
    times, rows_read, found = [], [], []
    for key in keys:
        answer = json.loads(
            ch.raw_query(
                statement.format(table=table, key=key) + " FORMAT JSON",
                settings={
                    "use_skip_indexes": use_skip_indexes,
                    # Each key is looked up twice: neither may answer from a cache.
                    "use_query_cache": 0,
                    "use_query_condition_cache": 0,
                },
            )
        )
        times.append(float(answer["statistics"]["elapsed"]))
        rows_read.append(int(answer["statistics"]["rows_read"]))
        found.append(int(answer["rows"]))
    return {
        "median_ms": median(times) * 1000,
        "max_ms": max(times) * 1000,
        "rows_read": int(median(rows_read)),
        "rows_found": int(median(found)),
        "rows_found_total": sum(found),
    }


def _bytes_on_disk(ch: Any, name: str) -> int:
    return int(
        ch.command(
            "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = currentDatabase() "
            f"AND table = '{name}' AND active"
        )
    )


def render(result: dict[str, Any]) -> list[str]:
    """The section's lines of the bench report."""
    lines = [
        f"{result['rows']:,} events, {result['subjects']:,} subjects, {result['parts']} parts; "
        f"skip indexes {result['index_bytes'] / 2**20:.1f} MiB of "
        f"{result['table_bytes'] / 2**20:.0f} MiB",
        f"{'lookup':<12} {'indexed ms':>11} {'rows read':>11} {'scan ms':>9} "
        f"{'rows read':>11} {'rows ratio':>11} {'time ratio':>11}",
    ]
    for name, entry in result["lookups"].items():
        indexed, scan = entry["indexed"], entry["full_scan"]
        lines.append(
            f"{name:<12} {indexed['median_ms']:>11.1f} {indexed['rows_read']:>11,} "
            f"{scan['median_ms']:>9.1f} {scan['rows_read']:>11,} "
            f"{entry['rows_read_ratio']:>10.0f}x {entry['time_ratio']:>10.1f}x"
        )
    if "projection" in result:
        p = result["projection"]
        lines.append(
            f"projection by subject: {p['subject']['median_ms']:.1f} ms, "
            f"{p['subject']['rows_read']:,} rows read; table {p['table_bytes'] / 2**20:.0f} MiB"
        )
    return lines


def main(rows: int) -> None:
    import clickhouse_connect  # noqa: PLC0415
    import django  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
    django.setup()
    folder = tempfile.mkdtemp(prefix="envelope-lookup-")
    try:
        ch = clickhouse_connect.get_client(dsn=f"chdb://{folder}")
        result = run(ch, rows=rows)
        ch.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(render(result)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000)
