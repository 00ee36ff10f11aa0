import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError
from event_log.verify import parse_since, record_verification, verify_deliveries

# 1 is Django's: ClickHouse or PostgreSQL could not be read (nothing was verified).
EXIT_FINDINGS = 3


class Command(BaseCommand):
    help = (
        "Report event ids duplicated in ClickHouse and event ids delivered (as PostgreSQL "
        "recorded) but missing from ClickHouse, for a window. Exit status: 0 clean, "
        f"{EXIT_FINDINGS} findings, 1 could not verify."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            default="1h",
            help="start of the window: a duration ago (90s, 15m, 2h, 7d) or an ISO 8601 "
            "time (default 1h); delivery records are kept EVENT_LOG_DELIVERY_RETENTION",
        )
        parser.add_argument("--until", default=None, help="end of the window (default now)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            since = parse_since(options["since"])
            until = parse_since(options["until"]) if options["until"] else None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            report = verify_deliveries(since=since, until=until)
        except ClickHouseError as exc:
            url = clickhouse.mask_url(clickhouse.clickhouse_url())
            raise CommandError(f"cannot read ClickHouse at {url}: {exc}") from None
        record_verification(report)
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), sort_keys=True))
        else:
            self.stdout.write(
                f"{report.events} events in {report.batches} batches delivered from "
                f"{report.since.isoformat()} to {report.until.isoformat()}: "
                f"{len(report.duplicated)} duplicated, {len(report.missing)} missing"
            )
            for event_id, copies in sorted(report.duplicated.items()):
                self.stdout.write(f"duplicated {event_id} ({copies} copies)")
            for event_id in sorted(report.missing):
                self.stdout.write(f"missing {event_id}")
        if not report.clean:
            sys.stdout.flush()
            raise SystemExit(EXIT_FINDINGS)
