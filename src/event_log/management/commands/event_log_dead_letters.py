from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from event_log.dead_letters import (
    DeadLetterRow,
    cutoff_for_age,
    dead_letters_count,
    dead_letters_list,
    dead_letters_purge,
    dead_letters_replay,
)


class Command(BaseCommand):
    help = "List, replay or purge dead-lettered events."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list", help="show dead letters")
        listing.add_argument("--json", action="store_true", help="one JSON object per line")
        listing.add_argument("--limit", type=int, default=None)
        for name, text in (("replay", "move back to the outbox"), ("purge", "delete for good")):
            action = actions.add_parser(name, help=text)
            action.add_argument("ids", nargs="*", type=int, help="dead-letter ids")
            action.add_argument("--all", action="store_true", help="every dead letter")
            if name == "purge":
                action.add_argument(
                    "--older-than-days",
                    type=float,
                    default=None,
                    help="only those dead-lettered more than this many days ago (>= 0)",
                )
                action.add_argument(
                    "--dry-run", action="store_true", help="show what would go; delete nothing"
                )
                action.add_argument(
                    "--yes",
                    action="store_true",
                    help="do not ask for confirmation (required without a terminal)",
                )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list(as_json=options["json"], limit=options["limit"])
            return
        ids: list[int] | None = options["ids"] or None
        older = options.get("older_than_days")
        if ids is None and not options["all"] and older is None:
            raise CommandError(f"{action}: give dead-letter ids, --all or a filter")
        if ids is not None and options["all"]:
            raise CommandError(f"{action}: give ids or --all, not both")
        if action == "replay":
            count = dead_letters_replay(ids=ids)
            self.stdout.write(f"replayed {count} dead letters")
            return
        try:
            cutoff = cutoff_for_age(older) if older is not None else None
        except ValueError as exc:
            raise CommandError(f"purge: --older-than-days: {exc}") from None
        self._purge(ids=ids, older_than=cutoff, dry_run=options["dry_run"], yes=options["yes"])

    def _list(self, *, as_json: bool, limit: int | None) -> None:
        rows = dead_letters_list(limit=limit)
        if not rows:
            # JSON lines stay parseable: nothing on stdout, the note on stderr.
            (self.stderr if as_json else self.stdout).write("no dead letters")
            return
        self._write(rows, as_json=as_json)

    def _purge(
        self, *, ids: list[int] | None, older_than: datetime | None, dry_run: bool, yes: bool
    ) -> None:
        if dry_run:
            rows = dead_letters_list(ids=ids, older_than=older_than)
            self._write(rows, as_json=False)
            self.stdout.write(f"would purge {len(rows)} dead letters (dry run: nothing deleted)")
            return
        count = dead_letters_count(ids=ids, older_than=older_than)
        if not count:
            self.stdout.write("no dead letters to purge")
            return
        if not yes:
            if not sys.stdin.isatty():
                raise CommandError(
                    f"purge would delete {count} dead letters for good: pass --yes to confirm "
                    "(there is no terminal to ask on), or --dry-run to see them"
                )
            answer = input(f"Delete {count} dead letters for good? Type 'yes' to confirm: ")
            if answer.strip().lower() != "yes":
                self.stdout.write("purge cancelled: nothing deleted")
                return
        purged = dead_letters_purge(ids=ids, older_than=older_than)
        self.stdout.write(f"purged {purged} dead letters")

    def _write(self, rows: list[DeadLetterRow], *, as_json: bool) -> None:
        for row in rows:
            if as_json:
                self.stdout.write(json.dumps(row.as_dict()))
            else:
                self.stdout.write(
                    f"{row.id:>6}  {row.event_type:<24} {row.event_id}  "
                    f"{row.event_date_time}  code={row.error_code}  {row.error[:80]}"
                )
