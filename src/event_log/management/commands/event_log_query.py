from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError
from event_log.query import (
    DEFAULT_LIMIT,
    DEFAULT_TIMEOUT,
    QueryRefusedError,
    QueryResult,
    query_event_log,
)


class Command(BaseCommand):
    help = (
        "Run one read-only statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) against the "
        "event log's ClickHouse, also while a running stack holds the embedded engine."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "statement", help='e.g. "SELECT event_type, count() FROM event_log GROUP BY event_type"'
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=DEFAULT_LIMIT,
            help=f"most rows shown (default {DEFAULT_LIMIT})",
        )
        parser.add_argument("--format", choices=("table", "json"), default="table")
        parser.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            help="seconds to wait for the process holding the embedded engine",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = query_event_log(
                options["statement"], limit=options["limit"], timeout=options["timeout"]
            )
        except QueryRefusedError as exc:
            raise CommandError(f"refused: {exc}") from None
        except ClickHouseError as exc:
            url = clickhouse.mask_url(clickhouse.clickhouse_url())
            raise CommandError(f"ClickHouse at {url}: {exc}") from None
        if options["format"] == "json":
            self.stdout.write(json.dumps(result.as_dict(), ensure_ascii=False))
            return
        self._table(result)

    def _table(self, result: QueryResult) -> None:
        if not result.columns:
            # The embedded engine names no columns for an empty answer.
            self.stderr.write("(0 rows)")
            return
        cells = [[_cell(value) for value in row] for row in result.rows]
        widths = [
            max([len(name)] + [len(row[i]) for row in cells])
            for i, name in enumerate(result.columns)
        ]
        self.stdout.write(
            "  ".join(n.ljust(w) for n, w in zip(result.columns, widths, strict=True))
        )
        self.stdout.write("  ".join("-" * w for w in widths))
        for row in cells:
            self.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        note = f"({len(result.rows)} rows"
        if result.truncated:
            note += f"; more left out by --limit {result.limit}"
        self.stderr.write(note + ")")


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value).replace("\n", "\\n")
