import json
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from event_log.clickhouse import ClickHouseError
from event_log.envelope import CommandActorMixin
from event_log.erasure import ErasureError, event_log_erase


class Command(CommandActorMixin, BaseCommand):
    help = (
        "Erase a subject's personal fields (e.g. --subject user:42) from the outbox, the "
        "dead letters and ClickHouse, and record the erasure as a subject_erased event."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--subject", required=True, help="<kind>:<id>, e.g. user:42")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = event_log_erase(subject=options["subject"])
        except ErasureError as exc:
            raise CommandError(str(exc)) from None
        except ClickHouseError as exc:
            raise CommandError(
                f"ClickHouse failed ({exc.summary}); "
                "PostgreSQL's part is done: run the command again"
            ) from None
        self.stdout.write(json.dumps(asdict(report), sort_keys=True))
