import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from event_log.status import clickhouse_status, outbox_status, retention_status


class Command(BaseCommand):
    help = (
        "Show the outbox depth, lag, batches in flight, dead letters, retention and "
        "ClickHouse row count and TTL."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument(
            "--no-clickhouse",
            action="store_true",
            help=(
                "do not ask ClickHouse (with the embedded engine held by a busy worker, "
                "its answer can take up to EVENT_LOG_TIME_BUDGET seconds)"
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        status = outbox_status().as_dict()
        status["retention"] = retention_status()
        if not options["no_clickhouse"]:
            status["clickhouse"] = clickhouse_status()
        if options["json"]:
            self.stdout.write(json.dumps(status, sort_keys=True))
            return
        for key, value in status.items():
            self.stdout.write(f"{key:>18}: {value}")
