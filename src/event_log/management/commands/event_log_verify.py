import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError
from event_log.verify import VerifyReport, chain_head, parse_since, record_verification, verify_log

# 1 is Django's: ClickHouse or PostgreSQL could not be read (nothing was verified).
EXIT_FINDINGS = 3


class Command(BaseCommand):
    help = (
        "Report, for a window, event ids duplicated in ClickHouse, delivered but missing "
        "from it, altered there or there without a batch chain entry, and any break in the "
        f"batch chain. Exit status: 0 clean, {EXIT_FINDINGS} findings, 1 could not verify. "
        "--head prints the chain's head, to keep outside both databases."
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
        parser.add_argument(
            "--head",
            action="store_true",
            help="print the batch chain's head (position, digest) as JSON, verify nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["head"]:
            self.stdout.write(json.dumps(chain_head(), sort_keys=True))
            return
        try:
            since = parse_since(options["since"])
            until = parse_since(options["until"]) if options["until"] else None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            report = verify_log(since=since, until=until)
        except ClickHouseError as exc:
            url = clickhouse.mask_url(clickhouse.clickhouse_url())
            raise CommandError(f"cannot read ClickHouse at {url}: {exc}") from None
        record_verification(report)
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), sort_keys=True))
        else:
            self._print(report)
        if not report.clean:
            sys.stdout.flush()
            raise SystemExit(EXIT_FINDINGS)

    def _print(self, report: VerifyReport) -> None:
        self.stdout.write(
            f"{report.events} events in {report.batches} batches delivered from "
            f"{report.since.isoformat()} to {report.until.isoformat()}: "
            f"{len(report.duplicated)} duplicated, {len(report.missing)} missing"
        )
        found = report.chain
        if found is not None:
            self.stdout.write(
                f"batch chain: {found.entries} entries checked, head at position "
                f"{found.head_position} ({found.head_digest}): {len(report.altered)} altered, "
                f"{len(report.extra)} extra, {len(found.breaks)} breaks, "
                f"{found.expired_batches} batches expired"
            )
        for event_id, copies in sorted(report.duplicated.items()):
            self.stdout.write(f"duplicated {event_id} ({copies} copies)")
        for event_id in sorted(report.missing):
            batch = report.missing_batches.get(event_id)
            self.stdout.write(f"missing {event_id}" + (f" (batch {batch})" if batch else ""))
        for event_id, batch_id in sorted(report.altered.items()):
            self.stdout.write(f"altered {event_id} (batch {batch_id})")
        for event_id, batch_id in sorted(report.extra.items()):
            self.stdout.write(f"extra {event_id} (batch {batch_id})")
        for broken in found.breaks if found is not None else []:
            of = f" (batch {broken.batch_id})" if broken.batch_id else ""
            self.stdout.write(f"chain broken at position {broken.position}{of}: {broken.problem}")
