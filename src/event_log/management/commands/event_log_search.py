from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError
from event_log.envelope import CommandActorMixin
from event_log.query import DEFAULT_TIMEOUT
from event_log.search import (
    SearchInputError,
    SearchPage,
    parse_filters,
    reader_url,
    search_events,
)

COLUMNS = ("event_date_time", "event_type", "event_id", "actor", "subject", "request_id")


class Command(CommandActorMixin, BaseCommand):
    help = (
        "Search the event log in ClickHouse, newest first: what happened to a subject "
        "(--subject user:42), what a request did (--request-id), what an actor did "
        "(--actor user:7 --since … --until …). Exit code 2 for a filter that cannot be "
        "understood, 1 when ClickHouse cannot answer."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--subject", help="kind:id of the subject, e.g. user:42")
        parser.add_argument("--actor", help="kind:id of the actor (user:7) or a kind (system)")
        parser.add_argument("--request-id", help="the request id the logs carry")
        parser.add_argument(
            "--type",
            action="append",
            default=[],
            dest="event_types",
            metavar="EVENT_TYPE",
            help="an event type, e.g. user_created (repeat for several)",
        )
        parser.add_argument(
            "--since", help="from this time on: 2h, 30m, 7d, 1w back, or 2026-11-30T08:00Z"
        )
        parser.add_argument("--until", help="before this time (same forms as --since)")
        parser.add_argument("--limit", type=int, default=100, help="events shown (default 100)")
        parser.add_argument("--offset", type=int, default=0, help="events skipped (paging)")
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        parser.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            help="seconds to wait for the process holding the embedded engine",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            filters = parse_filters(
                event_types=options["event_types"],
                subject=options["subject"],
                actor=options["actor"],
                request_id=options["request_id"],
                since=options["since"],
                until=options["until"],
            )
            page = search_events(
                filters,
                searcher="command:event_log_search",
                limit=options["limit"],
                offset=options["offset"],
                output="json" if options["json"] else "table",
                timeout=options["timeout"],
            )
        except SearchInputError as exc:
            raise CommandError(str(exc), returncode=2) from None
        except ClickHouseError as exc:
            url = clickhouse.mask_url(reader_url())
            raise CommandError(f"ClickHouse at {url}: {exc}") from None
        except DatabaseError as exc:
            # The search is published before it is shown: no record, no answer.
            raise CommandError(
                f"the search could not be recorded in the outbox (PostgreSQL): {exc}"
            ) from None
        if options["json"]:
            self.stdout.write(json.dumps(page.as_dict(), ensure_ascii=False))
        else:
            self._table(page)

    def _table(self, page: SearchPage) -> None:
        rows = [
            [*(str(getattr(event, name)) for name in COLUMNS), _compact(event.event_context)]
            for event in page.events
        ]
        header = [*COLUMNS, "event_context"]
        widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(6)]
        for cells in (header, *rows):
            fixed = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False))
            self.stdout.write(f"{fixed}  {cells[-1]}")
        note = f"({len(page.events)} events"
        if page.more:
            note += f"; more: --offset {page.offset + len(page.events)}"
        self.stderr.write(note + ")")


def _compact(context: Any) -> str:
    text = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)
    return text.replace("\n", "\\n")
