"""6. fsync on insert: what ``fsync_after_insert`` / ``fsync_part_directory`` cost.

Two tables made with the project's DDL files (so with fsync on, as the event
table is), one of them then set to ``fsync_after_insert = 0, fsync_part_directory
= 0``. The same batches of ``UserCreated``-like rows go to both, alternately, each
as one TabSeparated INSERT with its own deduplication token and
``async_insert=0``, as the relay sends them; each INSERT is timed from the call
to its acknowledgement. Both tables must end up holding every row once.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from statistics import median
from typing import Any

from harness import ClickHouseProbe, percentile

TABLES = {"on": "bench_fsync_on", "off": "bench_fsync_off"}


def _block(rows: int, start: datetime) -> tuple[bytes, list[uuid.UUID]]:
    from event_log import sql  # noqa: PLC0415 (Django is set up by the harness first)

    envelope = "\t" * len(sql.ENVELOPE_COLUMNS)  # empty
    ids = [uuid.uuid4() for _ in range(rows)]
    lines = [
        f"{event_id}\tuser_created\t{start + timedelta(microseconds=i):%Y-%m-%d %H:%M:%S.%f}"
        f'\tbench\t{{"user_id":{i},"email":"user{i}@example.com","first_name":"Ada",'
        f'"last_name":"Lovelace"}}\t1{envelope}\n'
        for i, event_id in enumerate(ids)
    ]
    return "".join(lines).encode(), ids


def run(probe: ClickHouseProbe, *, batches: int, rows: int) -> dict[str, Any]:
    from event_log import sql  # noqa: PLC0415 (Django is set up by the harness first)
    from event_log.schema import ddl  # noqa: PLC0415

    with probe.opened():
        ch = probe._client
        database = ch.database or "default"
        for table in TABLES.values():
            ch.command(f"DROP TABLE IF EXISTS `{database}`.`{table}`")
            ddl.create_table(ch, database=database, table=table)
        ch.command(
            f"ALTER TABLE `{database}`.`{TABLES['off']}` "
            "MODIFY SETTING fsync_after_insert = 0, fsync_part_directory = 0"
        )
        start = datetime.now(UTC).replace(tzinfo=None)
        blocks = [_block(rows, start + timedelta(seconds=b)) for b in range(batches)]
        timings: dict[str, list[float]] = {name: [] for name in TABLES}
        for number, (block, _) in enumerate(blocks):
            # Alternate which table goes first, so neither always follows the other's merge.
            order = ("on", "off") if number % 2 == 0 else ("off", "on")
            for name in order:
                started = time.perf_counter()
                ch.raw_insert(
                    f"`{database}`.`{TABLES[name]}`",
                    list(sql.CLICKHOUSE_COLUMNS),
                    insert_block=block,
                    fmt="TabSeparated",
                    settings={"insert_deduplication_token": str(uuid.uuid4()), "async_insert": 0},
                )
                timings[name].append(time.perf_counter() - started)
        expected = sorted(event_id for _, ids in blocks for event_id in ids)
        exactly_once = True
        for table in TABLES.values():
            stored = sorted(
                row[0]
                for row in ch.query(f"SELECT event_id FROM `{database}`.`{table}`").result_rows
            )
            exactly_once = exactly_once and stored == expected
            ch.command(f"DROP TABLE `{database}`.`{table}`")

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "median_ms": median(values) * 1000,
            "p90_ms": percentile(values, 90) * 1000,
            "max_ms": max(values) * 1000,
            "events_per_s": rows * len(values) / sum(values),
        }

    on, off = stats(timings["on"]), stats(timings["off"])
    return {
        "batches": batches,
        "rows_per_batch": rows,
        "on": on,
        "off": off,
        "median_ratio": on["median_ms"] / off["median_ms"],
        "added_median_ms": on["median_ms"] - off["median_ms"],
        "exactly_once": exactly_once,
    }
