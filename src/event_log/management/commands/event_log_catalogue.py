from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from event_log.catalogue import render_catalogue
from event_log.json_schemas import (
    SCHEMA_FOLDER,
    UnversionedChangeError,
    check_schemas,
    write_schemas,
)

CATALOGUE_PATH = "docs/events.md"


class Command(BaseCommand):
    help = (
        f"Print the event catalogue (--write: into {CATALOGUE_PATH} and one JSON Schema per "
        f"event type and version in {SCHEMA_FOLDER}/; --check: fail if they differ from the "
        "code, or if an event's fields changed without a new metadata_version)."
    )
    # Reads only the code and the repository's files: no database, no ClickHouse.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--write", action="store_true", help=f"write {CATALOGUE_PATH} and {SCHEMA_FOLDER}/"
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help=f"fail if {CATALOGUE_PATH} or {SCHEMA_FOLDER}/ differ from the code",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        text = render_catalogue()
        path = settings.REPO_ROOT / CATALOGUE_PATH
        folder = settings.REPO_ROOT / SCHEMA_FOLDER
        if options["write"]:
            try:
                written = write_schemas(folder)
            except UnversionedChangeError as exc:
                raise CommandError(f"nothing written:\n{exc}") from None
            path.write_text(text)
            self.stdout.write(f"{CATALOGUE_PATH} written")
            for name in written:
                self.stdout.write(f"{SCHEMA_FOLDER}/{name} written")
        elif options["check"]:
            problems = check_schemas(folder)
            if not path.exists() or path.read_text() != text:
                problems.insert(
                    0, f"{CATALOGUE_PATH} is stale: run manage.py event_log_catalogue --write"
                )
            if problems:
                raise CommandError("\n".join(problems))
        else:
            self.stdout.write(text)
