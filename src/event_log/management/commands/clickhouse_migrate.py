from typing import Any

from django.core.management.base import BaseCommand, CommandError

from event_log import clickhouse, schema
from event_log.clickhouse import ClickHouseError


class Command(BaseCommand):
    help = "Create the ClickHouse database and apply pending event-log DDL (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        url = clickhouse.clickhouse_url()
        try:
            applied = schema.migrate(url)
        except ClickHouseError as exc:
            raise CommandError(f"ClickHouse at {clickhouse.mask_url(url)} failed: {exc}") from None
        except Exception as exc:  # clickhouse-connect raises its own types for DDL errors
            error = ClickHouseError.from_exception(exc)
            raise CommandError(
                f"ClickHouse at {clickhouse.mask_url(url)} failed: {error}"
            ) from None
        if applied:
            self.stdout.write(f"applied: {', '.join(applied)}")
        else:
            self.stdout.write("ClickHouse schema is up to date")
