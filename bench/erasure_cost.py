"""Erasure cost: one subject's personal fields on an event table of a million rows.

Run alone (``.venv/bin/python bench/erasure_cost.py [rows]``); it makes a fresh
embedded engine in a temporary folder, the event table from the project's DDL
files, and ``rows`` UserCreated-like rows over twelve months (1,000 parts merged
as the engine pleases), five per subject. Then it times, for one subject and for
one hundred subjects at once: finding their rows, an ``ALTER TABLE … UPDATE``
mutation rewriting ``event_context`` of those rows (``mutations_sync = 2``, as
``event_log_erase`` runs it), and a lightweight ``DELETE`` of the same rows.
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

from event_log import schema  # noqa: E402 — needs the settings above


def main(rows: int) -> None:
    folder = tempfile.mkdtemp(prefix="erasure-bench-")
    ch = clickhouse_connect.get_client(dsn=f"chdb://{folder}")
    schema.apply_migrations(ch)
    started = time.perf_counter()
    ch.command(
        "INSERT INTO event_log (event_id, event_type, event_date_time, environment, "
        "event_context, metadata_version) SELECT generateUUIDv4(), 'user_created', "
        "toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalSecond(number * 31), "
        "'bench', concat('{\"user_id\":', toString(intDiv(number, 5)), "
        '\',"email":"user\', toString(number), \'@example.com","first_name":"Ada",'
        '"last_name":"Lovelace"}\'), 1 FROM numbers(' + str(rows) + ")",
        settings={"max_partitions_per_insert_block": 1000},
    )
    print(f"inserted {rows} rows in {time.perf_counter() - started:.1f} s")
    parts = ch.command("SELECT count() FROM system.parts WHERE table = 'event_log' AND active")
    print(f"active parts: {parts}")

    def timed(label: str, statement: str, **settings: object) -> float:
        start = time.perf_counter()
        ch.command(statement, settings=settings or None)
        elapsed = time.perf_counter() - start
        print(f"{label}: {elapsed * 1000:.0f} ms")
        return elapsed

    for subjects in (1, 100):
        first = 1000 + subjects * 7
        ids = ", ".join(f"'{n}'" for n in range(first, first + subjects))
        where = (
            f"event_type = 'user_created' AND JSONExtractRaw(event_context, 'user_id') IN ({ids})"
        )
        start = time.perf_counter()
        found = ch.query(f"SELECT toString(event_id) FROM event_log WHERE {where}").result_rows
        elapsed_ms = (time.perf_counter() - start) * 1000
        print(f"find {subjects} subject(s): {len(found)} rows in {elapsed_ms:.0f} ms")
        id_list = ", ".join(f"'{row[0]}'" for row in found)
        timed(
            f"ALTER UPDATE {subjects} subject(s)",
            "ALTER TABLE event_log UPDATE event_context = '{\"erased\":true}' "
            f"WHERE toString(event_id) IN ({id_list})",
            mutations_sync=2,
        )
        first += 50_000
        ids = ", ".join(f"'{n}'" for n in range(first, first + subjects))
        where = (
            f"event_type = 'user_created' AND JSONExtractRaw(event_context, 'user_id') IN ({ids})"
        )
        timed(f"lightweight DELETE {subjects} subject(s)", f"DELETE FROM event_log WHERE {where}")
    ch.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
