from typing import Any

from django.core.management.base import BaseCommand, CommandError

from event_log import clickhouse, schema
from event_log.clickhouse import ClickHouseError
from event_log.query import engine_holder


class Command(BaseCommand):
    help = (
        "Create the ClickHouse database, convert the previous service's event table, apply "
        "pending event-log DDL and check the table is fit (idempotent)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        url = clickhouse.clickhouse_url()
        path = clickhouse.embedded_path(url)
        holder = engine_holder(path) if path else None
        if holder:
            # Said plainly: the engine itself only reports BAD_ARGUMENTS here.
            raise CommandError(
                f"the embedded engine at {clickhouse.mask_url(url)} is held by another process "
                f"({holder}): stop it first (make run migrates before it starts the stack); "
                "event_log_query reads the event log meanwhile"
            )
        try:
            report = schema.migrate(url)
        except (schema.TableNotReadyError, schema.LegacyUpgradeError) as exc:
            raise CommandError(str(exc)) from None
        except ClickHouseError as exc:
            raise CommandError(f"ClickHouse at {clickhouse.mask_url(url)} failed: {exc}") from None
        except Exception as exc:  # clickhouse-connect raises its own types for DDL errors
            error = ClickHouseError.from_exception(exc)
            raise CommandError(
                f"ClickHouse at {clickhouse.mask_url(url)} failed: {error}"
            ) from None
        if report.upgraded:
            up = report.upgraded
            self.stdout.write(
                f"converted {up.table} from the previous service's schema: {up.rows:,} rows "
                f"in {up.months} months ({up.seconds:.1f} s); the old table is kept as "
                f"{up.legacy_table}: drop it once you are satisfied"
            )
        if report.applied:
            self.stdout.write(f"applied: {', '.join(report.applied)}")
        if report.repaired:
            settings = ", ".join(f"{k} = {v}" for k, v in report.repaired.items())
            self.stdout.write(f"repaired table settings: {settings}")
        if not report.changed:
            self.stdout.write("ClickHouse schema is up to date")
