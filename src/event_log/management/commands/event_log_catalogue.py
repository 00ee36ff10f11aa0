from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from event_log.catalogue import render_catalogue

CATALOGUE_PATH = "docs/events.md"


class Command(BaseCommand):
    help = f"Print the event catalogue (--write: into {CATALOGUE_PATH}; --check: fail if stale)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--write", action="store_true", help=f"write {CATALOGUE_PATH}")
        parser.add_argument(
            "--check", action="store_true", help=f"fail if {CATALOGUE_PATH} differs"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        text = render_catalogue()
        path = settings.REPO_ROOT / CATALOGUE_PATH
        if options["write"]:
            path.write_text(text)
            self.stdout.write(f"{CATALOGUE_PATH} written")
        elif options["check"]:
            if not path.exists() or path.read_text() != text:
                raise CommandError(
                    f"{CATALOGUE_PATH} is stale: run manage.py event_log_catalogue --write"
                )
        else:
            self.stdout.write(text)
